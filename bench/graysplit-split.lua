-- `make bench` scenario (e): graysplit's 1-rule 50% split written as an Envoy Lua filter
-- (LuaJIT), to compare a scripted filter with the Wasm one. Same contract (DESIGN.md,
-- "Bucketing contract"):
--   bucket = murmur3_x86_32(salt .. ":" .. user_id, seed 0) % 10000
--   bucket < 5000 -> "v2", otherwise (or no user id) -> "v1"
-- written into x-graysplit-version, then the route cache is cleared so Envoy routes on it.
-- scripts/bench.py checks graysplit_bucket() against Python's mmh3 before benchmarking.

local bit = require("bit")
local band, bor, bxor, lshift, rshift, rol, tobit =
  bit.band, bit.bor, bit.bxor, bit.lshift, bit.rshift, bit.rol, bit.tobit
local byte = string.byte

local SALT_PREFIX = "ramp:"      -- salt .. ":"
local GRAY_BELOW = 5000          -- 50% of 10000 buckets
local ROUTE_HEADER = "x-graysplit-version"
local IDENTITY_HEADER = "x-user-id"

-- 32-bit multiply modulo 2^32. LuaJIT numbers are doubles (exact below 2^53), so split `a` in
-- 16-bit halves: each partial product stays below 2^48, and the bit ops wrap modulo 2^32.
local function mul32(a, b)
  return tobit(band(a, 0xffff) * b + lshift(rshift(a, 16) * b, 16))
end

local C1, C2 = tobit(0xcc9e2d51), tobit(0x1b873593)

local function murmur3_32(s)
  local h = 0
  local len = #s
  local full = len - len % 4
  for i = 1, full, 4 do
    local b1, b2, b3, b4 = byte(s, i, i + 3)
    local k = bor(b1, lshift(b2, 8), lshift(b3, 16), lshift(b4, 24))
    k = mul32(rol(mul32(k, C1), 15), C2)
    h = tobit(mul32(rol(bxor(h, k), 13), 5) + 0xe6546b64)
  end
  local rest = len - full
  if rest > 0 then
    local k = 0
    if rest >= 3 then k = lshift(byte(s, full + 3), 16) end
    if rest >= 2 then k = bor(k, lshift(byte(s, full + 2), 8)) end
    k = bor(k, byte(s, full + 1))
    h = bxor(h, mul32(rol(mul32(k, C1), 15), C2))
  end
  h = bxor(h, len)
  h = bxor(h, rshift(h, 16))
  h = mul32(h, tobit(0x85ebca6b))
  h = bxor(h, rshift(h, 13))
  h = mul32(h, tobit(0xc2b2ae35))
  h = bxor(h, rshift(h, 16))
  if h < 0 then h = h + 4294967296 end   -- unsigned, like mmh3.hash(..., signed=False)
  return h
end

-- Global on purpose: bench.py's check calls it with other salts.
function graysplit_bucket(salt, user)
  return murmur3_32(salt .. ":" .. user) % 10000
end

function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  local user = headers:get(IDENTITY_HEADER)
  local version = "v1"
  if user ~= nil and user ~= "" and murmur3_32(SALT_PREFIX .. user) % 10000 < GRAY_BELOW then
    version = "v2"
  end
  headers:replace(ROUTE_HEADER, version)
  request_handle:clearRouteCache()
end
