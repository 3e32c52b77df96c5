-- Argo CD health of a ModelTraining (mlops.dev/v1alpha1).
--   Progressing  the operator has not observed the current generation; a run is pending or running
--   Degraded     invalid spec; the latest run failed (or its backend is unavailable); no model
--                passed the validation gate yet
--   Suspended    spec.suspend pauses the schedule and nothing else is wrong
--   Healthy      the latest run succeeded; a validated model version exists
local hs = lagging(obj, {"Succeeded", "Validated"}) or invalid(obj, "Succeeded")
if hs ~= nil then
  return hs
end

local status = obj.status
local succeeded = condition(obj, "Succeeded")
local validated = condition(obj, "Validated")
local model = status.latestValidatedModel
local run = status.latestRun

if run ~= nil and (run.state == "Pending" or run.state == "Running") then
  return {status = "Progressing", message = "Run " .. tostring(run.name) .. " is " .. run.state}
end
if succeeded == nil or succeeded.status == "Unknown" then
  return {status = "Progressing", message = message_of(succeeded, "Waiting for the first run")}
end
if succeeded.status == "False" then
  return {status = "Degraded", message = explain(succeeded, "The latest run failed")}
end
if validated ~= nil and validated.status == "False" and model == nil then
  return {status = "Degraded", message = explain(validated, "No model version passed the validation gate")}
end
if obj.spec ~= nil and obj.spec.suspend == true and obj.spec.schedule ~= nil then
  return {status = "Suspended", message = "The schedule is suspended (spec.suspend)"}
end

local text = "The latest run succeeded"
if model ~= nil then
  text = "Model version " .. tostring(model.version) .. " is validated"
end
if validated ~= nil and validated.status == "False" then
  -- The gate rejected the newest model: the previous validated version stays in service.
  text = text .. "; the latest model was rejected: " .. message_of(validated, "validation failed")
end
return {status = "Healthy", message = text}
