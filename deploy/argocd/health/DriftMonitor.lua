-- Argo CD health of a DriftMonitor (mlops.dev/v1alpha1).
--   Progressing  the operator has not observed the current generation; no check has run yet
--   Degraded     invalid spec; the checks fail (Ready=False); the last check found drift
--   Healthy      the last check found no drift, or it is still collecting samples (a quiet
--                deployment must not keep an Argo CD sync waiting)
local hs = lagging(obj, {"Ready", "DriftDetected"}) or invalid(obj, "Ready")
if hs ~= nil then
  return hs
end

local status = obj.status
local ready = condition(obj, "Ready")
local drift = condition(obj, "DriftDetected")

if ready == nil or ready.status == "Unknown" then
  return {status = "Progressing", message = message_of(ready, "Waiting for the first check")}
end
if ready.status == "False" then
  return {status = "Degraded", message = explain(ready, "Drift checks are failing")}
end
if drift ~= nil and drift.status == "True" then
  return {status = "Degraded", message = message_of(drift, "Drift detected")}
end
if status.phase == "InsufficientData" then
  return {status = "Healthy", message = message_of(drift, "Collecting samples for the first decision")}
end
return {status = "Healthy", message = message_of(drift, "No drift in the last check")}
