-- Shared by the mlops.dev health checks: hack/gen-manifests.py puts it in front of each kind's
-- script in argocd-cm.yaml. Argo CD runs custom health scripts in gopher-lua (Lua 5.1) with only the
-- base, table and a safe os library: no string or math functions here.
--
-- Never raise, whatever the object looks like: Argo CD would show Unknown with a stack trace. Every
-- read goes through field()/text()/number(), which answer nil (or the fallback) for a wrong type.
-- docs/argocd-health.md lists the health of every condition combination (generated, tested).

-- t[key] when t is a table, else nil.
local function field(t, key)
  if type(t) == "table" then
    return t[key]
  end
  return nil
end

-- A non-empty string (numbers are printed), else fallback.
local function text(value, fallback)
  if type(value) == "string" and value ~= "" then
    return value
  end
  if type(value) == "number" then
    return tostring(value)
  end
  return fallback
end

local function number(value)
  if type(value) == "number" then
    return value
  end
  return nil
end

-- The condition of this type in status.conditions (a table), or nil.
local function condition(obj, type_)
  local list = field(field(obj, "status"), "conditions")
  if type(list) ~= "table" then
    return nil
  end
  for _, c in ipairs(list) do
    if field(c, "type") == type_ then
      return c
    end
  end
  return nil
end

local function message_of(c, fallback)
  return text(field(c, "message"), fallback)
end

-- "Reason: message" of a condition, for Degraded answers.
local function explain(c, fallback)
  local message = message_of(c, fallback)
  local reason = text(field(c, "reason"), nil)
  if reason ~= nil then
    return reason .. ": " .. message
  end
  return message
end

local function generation_of(obj)
  return number(field(field(obj, "metadata"), "generation"))
end

-- The generation a condition describes: its own observedGeneration, else the status's.
local function described(obj, c)
  return number(field(c, "observedGeneration")) or number(field(field(obj, "status"), "observedGeneration"))
end

-- Whether a condition describes the current spec (true when either generation is not known).
local function current(obj, c)
  local generation = generation_of(obj)
  local observed = described(obj, c)
  return generation == nil or observed == nil or observed >= generation
end

-- The condition of this type if it describes the current spec, else nil (an older verdict says
-- nothing about the current spec).
local function fresh(obj, type_)
  local c = condition(obj, type_)
  if c ~= nil and current(obj, c) then
    return c
  end
  return nil
end

local function status_is(c, value)
  return field(c, "status") == value
end

local function reason_is(c, value)
  return field(c, "reason") == value
end

-- Before anything else: an object the operator has not looked at yet, or a current verdict that
-- does not heal by waiting. The operator refreshes only the summary condition when it finds the spec
-- invalid, so the other conditions' age must not hide it.
local function settled(obj, summary)
  local status = field(obj, "status")
  if type(status) ~= "table" then
    return {status = "Progressing", message = "Waiting for the operator to reconcile"}
  end
  local main = condition(obj, summary)
  if main ~= nil and current(obj, main) and reason_is(main, "InvalidSpec") then
    return {status = "Degraded", message = explain(main, "The spec is invalid")}
  end
  local generation = generation_of(obj)
  local observed = number(field(status, "observedGeneration"))
  if status.phase == "Invalid" and generation ~= nil and observed ~= nil and observed >= generation then
    return {status = "Degraded", message = explain(main, "The spec is invalid")}
  end
  if generation ~= nil and (observed == nil or observed < generation) then
    return {status = "Progressing",
            message = "Waiting for the operator to observe generation " .. tostring(generation) ..
                      " (observed " .. tostring(observed or "none") .. ")"}
  end
  if main ~= nil and not current(obj, main) then
    return {status = "Progressing",
            message = summary .. " describes generation " .. tostring(described(obj, main)) ..
                      "; waiting for generation " .. tostring(generation)}
  end
  return nil
end

-- Progressing while another condition still describes an older spec, unless the summary condition
-- already gave a current failing verdict (which the caller reports first).
local function lagging(obj, conditions)
  for _, type_ in ipairs(conditions) do
    local c = condition(obj, type_)
    if c ~= nil and not current(obj, c) then
      return {status = "Progressing",
              message = type_ .. " describes generation " .. tostring(described(obj, c)) ..
                        "; waiting for generation " .. tostring(generation_of(obj))}
    end
  end
  return nil
end
