-- Argo CD health of a DriftMonitor (mlops.dev/v1alpha1).
--   Progressing  the operator has not observed the current generation; no check has run yet; the
--                deployment serves no model yet (it is Progressing itself)
--   Degraded     invalid spec; the checks fail (Ready=False); the last check found drift
--   Healthy      the last check found no drift, or it is still collecting samples, or the deployment
--                has not served a request yet (a quiet deployment must not keep an Argo CD sync waiting)
local hs = settled(obj, "Ready")
if hs ~= nil then
  return hs
end

local status = obj.status
local ready = condition(obj, "Ready")

if status_is(ready, "False") then
  if reason_is(ready, "NoServedModel") then
    return {status = "Progressing", message = message_of(ready, "Waiting for the deployment to serve a model")}
  end
  if reason_is(ready, "NoRequestsYet") then
    return {status = "Healthy", message = message_of(ready, "Waiting for the first served request")}
  end
  return {status = "Degraded", message = explain(ready, "Drift checks are failing")}
end
hs = lagging(obj, {"DriftDetected"})
if hs ~= nil then
  return hs
end
local drift = condition(obj, "DriftDetected")
if ready == nil or not status_is(ready, "True") then
  return {status = "Progressing", message = message_of(ready, "Waiting for the first check")}
end
if status_is(drift, "True") then
  return {status = "Degraded", message = message_of(drift, "Drift detected")}
end
if status.phase == "InsufficientData" then
  return {status = "Healthy", message = message_of(drift, "Collecting samples for the first decision")}
end
return {status = "Healthy", message = message_of(drift, "No drift in the last check")}
