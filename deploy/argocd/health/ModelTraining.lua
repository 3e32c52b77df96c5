-- Argo CD health of a ModelTraining (mlops.dev/v1alpha1).
--   Progressing  the operator has not observed the current generation; a run is pending or running
--   Degraded     invalid spec; the latest run failed (or its backend is unavailable); no model
--                passed the validation gate yet
--   Suspended    spec.suspend pauses the schedule and nothing else is wrong
--   Healthy      the latest run succeeded; a validated model version exists
local hs = settled(obj, "Succeeded")
if hs ~= nil then
  return hs
end

local status = obj.status
local succeeded = condition(obj, "Succeeded")
local model = field(status, "latestValidatedModel")
local run = field(status, "latestRun")
local state = field(run, "state")

-- A failed run of the current spec is a verdict, whatever the other conditions still say.
if status_is(succeeded, "False") then
  return {status = "Degraded", message = explain(succeeded, "The latest run failed")}
end
if state == "Pending" or state == "Running" then
  return {status = "Progressing", message = "Run " .. text(field(run, "name"), "?") .. " is " .. state}
end
hs = lagging(obj, {"Validated"})
if hs ~= nil then
  return hs
end
local validated = condition(obj, "Validated")
if succeeded == nil or not status_is(succeeded, "True") then
  return {status = "Progressing", message = message_of(succeeded, "Waiting for the first run")}
end
if status_is(validated, "False") and type(model) ~= "table" then
  return {status = "Degraded", message = explain(validated, "No model version passed the validation gate")}
end
if field(obj.spec, "suspend") == true and field(obj.spec, "schedule") ~= nil then
  return {status = "Suspended", message = "The schedule is suspended (spec.suspend)"}
end

local message = "The latest run succeeded"
if type(model) == "table" then
  message = "Model version " .. text(field(model, "version"), "?") .. " is validated"
end
if status_is(validated, "False") then
  -- The gate rejected the newest model: the previous validated version stays in service.
  message = message .. "; the latest model was rejected: " .. message_of(validated, "validation failed")
end
return {status = "Healthy", message = message}
