-- Shared by the mlops.dev health checks: hack/gen-manifests.py puts it in front of each kind's
-- script in argocd-cm.yaml. Argo CD runs custom health scripts in gopher-lua (Lua 5.1) with only the
-- base, table and a safe os library: no string or math functions here.

-- The condition of this type in status.conditions, or nil.
local function condition(obj, type)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function message_of(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

-- "Reason: message" of a condition, for Degraded answers.
local function explain(c, fallback)
  if c == nil then
    return fallback
  end
  local text = message_of(c, fallback)
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason .. ": " .. text
  end
  return text
end

-- Progressing while the operator has not yet looked at the current spec: until then the status
-- (and each condition) describes an older generation, and Healthy would be a lie.
local function lagging(obj, conditions)
  if obj.status == nil then
    return {status = "Progressing", message = "Waiting for the operator to reconcile"}
  end
  local generation = obj.metadata.generation
  if generation == nil then
    return nil
  end
  local observed = obj.status.observedGeneration
  if observed == nil or observed < generation then
    return {status = "Progressing",
            message = "Waiting for the operator to observe generation " .. tostring(generation) ..
                      " (observed " .. tostring(observed or "none") .. ")"}
  end
  for _, type in ipairs(conditions) do
    local c = condition(obj, type)
    if c ~= nil and c.observedGeneration ~= nil and c.observedGeneration < generation then
      return {status = "Progressing",
              message = type .. " describes generation " .. tostring(c.observedGeneration) ..
                        "; waiting for generation " .. tostring(generation)}
    end
  end
  return nil
end

-- An invalid spec never heals by waiting.
local function invalid(obj, summary)
  if obj.status.phase == "Invalid" then
    return {status = "Degraded", message = explain(condition(obj, summary), "The spec is invalid")}
  end
  return nil
end
