-- Argo CD health of a ModelDeployment (mlops.dev/v1alpha1).
--   Progressing  the operator has not observed the current generation; a rollout (shadow, canary
--                steps, promotion) is under way; waiting for a validated model or the model servers
--   Suspended    a rollout waits for manual approval (annotation mlops.dev/approve)
--   Degraded     invalid spec; Degraded=True (e.g. a rollout was aborted and rolled back); Ready=False
--   Healthy      Ready=True and nothing in flight
local hs = lagging(obj, {"Ready", "Progressing", "AwaitingApproval", "Degraded"}) or invalid(obj, "Ready")
if hs ~= nil then
  return hs
end

local status = obj.status
local ready = condition(obj, "Ready")
local progressing = condition(obj, "Progressing")
local awaiting = condition(obj, "AwaitingApproval")
local degraded = condition(obj, "Degraded")

if degraded ~= nil and degraded.status == "True" then
  return {status = "Degraded", message = explain(degraded, "The deployment is degraded")}
end
if awaiting ~= nil and awaiting.status == "True" then
  local version = tostring(status.candidateVersion or "the candidate")
  return {status = "Suspended",
          message = message_of(awaiting, "Version " .. version .. " awaits approval: kubectl annotate " ..
                                         "modeldeployment " .. tostring(obj.metadata.name) ..
                                         " mlops.dev/approve=" .. version)}
end
if progressing ~= nil and progressing.status == "True" then
  return {status = "Progressing", message = message_of(progressing, "A rollout is in progress")}
end
-- Not serving yet, for reasons that resolve themselves: the ModelTraining it follows has not
-- validated a model yet, or the model server is starting.
if ready == nil or ready.status == "Unknown" or ready.reason == "WaitingForModel" or ready.reason == "Starting" then
  return {status = "Progressing", message = message_of(ready, "Waiting for the model servers")}
end
if ready.status == "False" then
  return {status = "Degraded", message = explain(ready, "The deployment does not serve")}
end
local text = "Serving"
if status.stableVersion ~= nil then
  text = "Serving model version " .. tostring(status.stableVersion)
end
return {status = "Healthy", message = text}
