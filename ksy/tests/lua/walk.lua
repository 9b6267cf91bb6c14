-- The walk of tests/summary.py and tests/walk.js over the generated Lua parser:
--
--   LUA_PATH="RUNTIME/?.lua;BUILD/?.lua" lua5.3 walk.lua < paths.txt
--
-- prints one JSON object {path: outcome}. test_targets.py runs it when KAITAI_LUA_RUNTIME
-- names a checkout of the Kaitai Lua runtime (0.11). Lua has no SHA-256, so cluster bytes
-- are printed as "hex:..." and the test hashes them; the generated code raises validation
-- errors as bare messages without a srcPath, so only the kind of error is compared.
require("nvbox")
local stringstream = require("string_stream")

local function hex(s)
  return "hex:" .. (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function json(v)
  local t = type(v)
  if t == "nil" then return "null"
  elseif t == "boolean" then return tostring(v)
  elseif t == "number" then return string.format("%d", v)
  elseif t == "string" then
    -- code points as JSON escapes (Lua's utf8 library lets surrogates through, JSON shows
    -- them); a string it cannot decode at all is shown as its bytes, so it differs
    local ok, out = pcall(function()
      local parts = {}
      for _, cp in utf8.codes(v) do
        if cp >= 0x20 and cp < 0x7f and cp ~= 0x22 and cp ~= 0x5c then parts[#parts + 1] = string.char(cp)
        elseif cp <= 0xffff then parts[#parts + 1] = string.format("\\u%04x", cp)
        else
          local u = cp - 0x10000
          parts[#parts + 1] = string.format("\\u%04x\\u%04x", 0xd800 + (u >> 10), 0xdc00 + (u & 0x3ff))
        end
      end
      return '"' .. table.concat(parts) .. '"'
    end)
    if ok then return out end
    return '"bytes:' .. hex(v):sub(5) .. '"'
  elseif v.__keys then
    local parts = {}
    for _, k in ipairs(v.__keys) do parts[#parts + 1] = json(k) .. ":" .. json(v[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  else
    local parts = {}
    for i = 1, #v do parts[i] = json(v[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
end

-- an object that keeps its keys in insertion order
local function obj() return { __keys = {} } end
local function set(o, k, v) o.__keys[#o.__keys + 1] = k; o[k] = v end

local function walk_map(node, level, fanout, first, out)
  local span = fanout ^ (level - 1) // 1
  for i, e in ipairs(node.entries) do
    if e.pointer.offset ~= 0 then
      if level == 1 then out[#out + 1] = { first + i - 1, hex(e.child.data) }
      else walk_map(e.child, level - 1, fanout, first + (i - 1) * span, out) end
    end
  end
end

local function cluster_map(cm, fanout)
  local out = {}
  if cm.root_pointer.pointer.offset ~= 0 then
    if cm.depth.value == 0 then out[1] = { 0, hex(cm.root_node.data) }
    else walk_map(cm.root_node, cm.depth.value, fanout, 0, out) end
  end
  return out
end

local function directory(node, fanout, out)
  if node.level == 0 then
    for _, e in ipairs(node.body.entries) do
      local b, c = e.body, e.body.content
      local d = obj()
      set(d, "name", b.name.value); set(d, "size", b.size.value); set(d, "ext", #b.extensions)
      if c.tag == 0x80 then set(d, "inline", hex(c.inline_data))
      else set(d, "depth", c.clusters.depth.value); set(d, "clusters", cluster_map(c.clusters, fanout)) end
      out[#out + 1] = d
    end
  else
    for _, br in ipairs(node.body.branches) do directory(br.child_node, fanout, out) end
  end
end

local function refcounts(node, level, fanout, half, first, out)
  if level == 1 then
    for j, n in ipairs(node.counts) do if n ~= 0 then set(out, string.format("%d", first + j - 1), n) end end
    return
  end
  local span = half * (fanout ^ (level - 2) // 1)
  for i, e in ipairs(node.entries) do
    if e.pointer.offset ~= 0 then refcounts(e.child, level - 1, fanout, half, first + (i - 1) * span, out) end
  end
end

local function summarize(img)
  local s, h = img.active_slot, img.header
  local out = obj()
  local exts, creators = {}, {}
  for _, x in ipairs(h.extensions) do
    exts[#exts + 1] = { x.ext_type, x.ext_length }
    if x.ext_type == 1 then creators[#creators + 1] = x.creator_name end
  end
  set(out, "cluster_bits", h.cluster_bits); set(out, "capacity", h.capacity_clusters)
  set(out, "extensions", exts); set(out, "creator", creators)
  set(out, "slot", img.active_slot_index); set(out, "generation", s.generation)
  set(out, "image_clusters", s.image_clusters); set(out, "blob_count", s.blob_count)
  set(out, "encrypted", img.is_encrypted and true or false)
  local fanout = img.cluster_size // img.pointer_width
  if img.is_encrypted then
    local kinds = {}
    for i, k in ipairs(img.keyslot_table.slots) do kinds[i] = k.kind.value end
    set(out, "key_slots", kinds)
    return out
  end
  local counts = obj()
  refcounts(img.refcount_root_node, s.refcount_depth, fanout, img.cluster_size // 2, 0, counts)
  set(out, "refcounts", counts)
  local blobs = {}
  if img.dir_root_node ~= nil then directory(img.dir_root_node, fanout, blobs) end
  set(out, "blobs", blobs)
  if s.snaptable_depth ~= 0 then
    local table_ = {}
    walk_map(img.snaptable_root_node, s.snaptable_depth, fanout, 0, table_)
    set(out, "snapshot_table_clusters", table_)
  end
  if img.snapshot_table ~= nil then
    local snaps = {}
    for i, sn in ipairs(img.snapshot_table.snapshots) do
      local b = sn.body
      local tree = {}
      if b.dir_root_node ~= nil then directory(b.dir_root_node, fanout, tree) end
      local d = obj()
      set(d, "id", b.id.value); set(d, "name", b.name.value); set(d, "blob_count", b.blob_count.value)
      set(d, "metadata", b.metadata ~= nil and hex(b.metadata.value) or nil); set(d, "blobs", tree)
      snaps[i] = d
    end
    set(out, "snapshots", snaps)
  end
  return out
end

local function outcome(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("a")
  f:close()
  local ok, res = pcall(function() return summarize(Nvbox(KaitaiStream(stringstream(data)))) end)
  if ok then return res end
  local msg = tostring(res)
  -- `valid: eq` and `contents` fail with a message of their own, the others with the class name
  local kind = msg:match("(Validation%a+Error)")
    or ((msg:match("not equal, expected") or msg:match("unexpected fixed contents")) and "ValidationNotEqualError")
  local o = obj()
  if kind then set(o, "error", kind)
  elseif msg:match("requested %d+ bytes") then set(o, "error", "eof")
  elseif msg:match("Invalid UTF%-8") then set(o, "error", "utf8")
  else error(path .. ": " .. msg) end
  return o
end

local result = obj()
for line in io.lines() do
  if line ~= "" then set(result, line, outcome(line)) end
end
io.write(json(result))
