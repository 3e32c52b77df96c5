-- Argo CD health of a ModelDeployment (mlops.dev/v1alpha1).
--   Progressing  the operator has not observed the current generation; a rollout (shadow, canary
--                steps, promotion) is under way; waiting for a validated model or the model servers
--   Suspended    a rollout waits for manual approval (annotation mlops.dev/approve), or the
--                post-promotion guard's rollback does (annotation mlops.dev/rollback)
--   Degraded     invalid spec; Degraded=True (e.g. a rollout was aborted and rolled back); Ready=False
--   Healthy      Ready=True and nothing in flight (an open anomaly is named in the message)
local hs = settled(obj, "Ready")
if hs ~= nil then
  return hs
end

local status = obj.status
local ready = condition(obj, "Ready")
local degraded = fresh(obj, "Degraded")

if status_is(degraded, "True") then
  return {status = "Degraded", message = explain(degraded, "The deployment is degraded")}
end
-- Not serving yet, for reasons that resolve themselves: the ModelTraining it follows has not
-- validated a model yet, or the model server is starting.
local waiting = ready == nil or not (status_is(ready, "True") or status_is(ready, "False"))
  or reason_is(ready, "WaitingForModel") or reason_is(ready, "Starting")
if status_is(ready, "False") and not waiting then
  return {status = "Degraded", message = explain(ready, "The deployment does not serve")}
end
hs = lagging(obj, {"Progressing", "AwaitingApproval", "Degraded", "Anomalous"})
if hs ~= nil then
  return hs
end
local awaiting = condition(obj, "AwaitingApproval")
local progressing = condition(obj, "Progressing")
if status_is(awaiting, "True") and reason_is(awaiting, "RollbackAwaitingApproval") then
  return {status = "Suspended", message = message_of(awaiting, "A rollback awaits approval")}
end
if status_is(awaiting, "True") then
  local version = text(field(status, "candidateVersion"), "the candidate")
  return {status = "Suspended",
          message = message_of(awaiting, "Version " .. version .. " awaits approval: kubectl annotate " ..
                                         "modeldeployment " .. text(field(obj.metadata, "name"), "NAME") ..
                                         " mlops.dev/approve=" .. version)}
end
if status_is(progressing, "True") then
  return {status = "Progressing", message = message_of(progressing, "A rollout is in progress")}
end
if waiting then
  return {status = "Progressing", message = message_of(ready, "Waiting for the model servers")}
end
local message = "Serving"
local stable = text(field(status, "stableVersion"), nil)
if stable ~= nil then
  message = "Serving model version " .. stable
end
local anomalous = condition(obj, "Anomalous")
if status_is(anomalous, "True") then
  message = message .. "; anomalous: " .. text(field(anomalous, "message"), "")
end
return {status = "Healthy", message = message}
