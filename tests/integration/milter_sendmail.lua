-- Sendmail-style milter conversation with portcullisd, driven by miltertest(8).
--
-- Run by tests/integration/test_miltertest.sh, which starts portcullisd and
-- loads the lists first:
--     kill   add host:bad.host.test     kill add host:.evil.test
--     accept add host:good.host.test
-- Globals from the command line (-D): port (the milter's TCP port).
--
-- What a Sendmail MTA would give the filter that Postfix in our lab cannot:
-- the {auth_authen} macro of an authenticated client (relay_authenticated),
-- and a client host name of our choosing (host: list entries).
--
-- miltertest only reports the milter's reply command, not its text: a refusal
-- is SMFIR_REPLYCODE (the filter chose the code) or SMFIR_REJECT.
-- Ends with the line "N passed, N failed"; exits 1 on any failure.

local SOCK = "inet:" .. tostring(port) .. "@127.0.0.1"
local passed, failed = 0, 0
local NAMES = {
  [SMFIR_CONTINUE] = "continue", [SMFIR_ACCEPT] = "accept", [SMFIR_REJECT] = "reject",
  [SMFIR_TEMPFAIL] = "tempfail", [SMFIR_REPLYCODE] = "replycode", [SMFIR_DISCARD] = "discard",
}

local function rname(r)
  return NAMES[r] or ("0x" .. string.format("%02x", math.floor(tonumber(r) or 0)))
end

local function is_refusal(r) return r == SMFIR_REPLYCODE or r == SMFIR_REJECT end
local function is_pass(r) return r == SMFIR_CONTINUE or r == SMFIR_ACCEPT end

local function check(name, cond, detail)
  if cond then
    passed = passed + 1
    mt.echo("ok   " .. name)
  else
    failed = failed + 1
    mt.echo("FAIL " .. name .. (detail and (": " .. detail) or ""))
  end
end

-- One milter conversation up to the stage asked for.  Returns a table of
-- replies by stage (connect, helo, mail, rcpt[i], eom) and the stage at which
-- the filter refused (nil if none).  Stops at the first refusal, as an MTA would.
local function session(o)
  local conn = mt.connect(SOCK, 20, 0.25)
  if conn == nil then
    error("cannot connect to portcullisd at " .. SOCK)
  end
  local r = { rcpt = {} }
  local function step(stage, err)
    if err ~= nil then
      error(stage .. " failed: " .. tostring(err))
    end
    local rep = mt.getreply(conn)
    r[stage] = rep
    return rep
  end

  local rep = step("connect", mt.conninfo(conn, o.host, o.ip))
  if is_refusal(rep) or rep == SMFIR_TEMPFAIL then r.refused = "connect"; mt.disconnect(conn); return r end

  if not mt.test_option(conn, SMFIP_NOHELO) then
    rep = step("helo", mt.helo(conn, o.helo or o.host))
    if is_refusal(rep) or rep == SMFIR_TEMPFAIL then r.refused = "helo"; mt.disconnect(conn); return r end
  end

  if o.auth then
    mt.macro(conn, SMFIC_MAIL, "{auth_authen}", o.auth, "{auth_type}", "PLAIN", "i", o.qid or "QID1")
  else
    mt.macro(conn, SMFIC_MAIL, "i", o.qid or "QID1")
  end
  rep = step("mail", mt.mailfrom(conn, "<" .. (o.sender or "sender@outside.test") .. ">"))
  if is_refusal(rep) or rep == SMFIR_TEMPFAIL then r.refused = "mail"; mt.disconnect(conn); return r end

  local any = false
  for i, rc in ipairs(o.rcpts or {}) do
    local err = mt.rcptto(conn, "<" .. rc .. ">")
    if err ~= nil then error("rcpt failed: " .. tostring(err)) end
    r.rcpt[i] = mt.getreply(conn)
    if is_pass(r.rcpt[i]) then any = true end
  end

  if o.message and any then
    -- skip the steps the filter negotiated away (SMFIP_NO*); miltertest
    -- would return an error for them
    if not mt.test_option(conn, SMFIP_NODATA) then
      local e = mt.data(conn)
      if e ~= nil then error("data failed: " .. tostring(e)) end
    end
    if not mt.test_option(conn, SMFIP_NOHDRS) then
      local function hdr(n, v)
        local e = mt.header(conn, n, v)
        if e ~= nil then error("header failed: " .. tostring(e)) end
      end
      hdr("From", o.from or "Sender <sender@outside.test>")
      hdr("To", o.rcpts[1])
      hdr("Subject", "miltertest " .. (o.qid or "QID1"))
      hdr("Message-ID", "<" .. (o.qid or "QID1") .. "@portcullis.test>")
    end
    if not mt.test_option(conn, SMFIP_NOEOH) then
      local e = mt.eoh(conn)
      if e ~= nil then error("eoh failed: " .. tostring(e)) end
    end
    if not mt.test_option(conn, SMFIP_NOBODY) then
      local e = mt.bodystring(conn, "Hello from miltertest.\r\n")
      if e ~= nil then error("body failed: " .. tostring(e)) end
    end
    local e = mt.eom(conn)
    if e ~= nil then error("eom failed: " .. tostring(e)) end
    r.eom = mt.getreply(conn)
  end
  mt.disconnect(conn)
  return r
end

local function show(r)
  local s = "connect=" .. rname(r.connect)
  if r.helo then s = s .. " helo=" .. rname(r.helo) end
  if r.mail then s = s .. " mail=" .. rname(r.mail) end
  for i, x in ipairs(r.rcpt) do s = s .. " rcpt" .. i .. "=" .. rname(x) end
  if r.eom then s = s .. " eom=" .. rname(r.eom) end
  return s
end

-- A list entry must be live within 1 s of the change; the runner loads the
-- lists before the daemon starts, but poll anyway so the script also works
-- against a daemon whose lists were changed just before.
local function eventually(o, pred, within)
  local t = 0
  local r
  while true do
    r = session(o)
    if pred(r) then return r end
    if t >= within then return r end
    mt.sleep(0.1)
    t = t + 0.1
  end
end

local function refused_by_mail(r) return r.refused == "connect" or r.refused == "mail" end

-- miltertest exits 1 without a word on a Lua error: run each case under
-- pcall so an error is reported, counted, and the other cases still run.
local function case(name, fn)
  local ok, err = pcall(fn)
  if not ok then
    failed = failed + 1
    mt.echo("FAIL " .. name .. ": error: " .. tostring(err))
  end
end

mt.echo("miltertest against portcullisd at " .. SOCK)

-- 1. outside client, no auth: local recipient fine, foreign refused
case("1. outside client, no auth: local recipient fine, foreign refused", function()
  local r = session{ host = "outside.example.net", ip = "127.0.0.5",
                     rcpts = { "user@example.com", "user@other.org" } }
  check("outside client: MAIL continues", is_pass(r.mail), show(r))
  check("outside client: rcpt user@example.com passes", is_pass(r.rcpt[1]), show(r))
  check("outside client: rcpt user@other.org refused", is_refusal(r.rcpt[2]), show(r))
end)

-- 2. same client authenticated ({auth_authen} at MAIL): may relay
case("2. same client authenticated ({auth_authen} at MAIL): may relay", function()
  local r = session{ host = "outside.example.net", ip = "127.0.0.5", auth = "alice", qid = "QID2",
                     rcpts = { "user@other.org" }, message = true }
  check("{auth_authen}=alice: rcpt user@other.org passes", is_pass(r.rcpt[1]), show(r))
  check("{auth_authen}=alice: end of message accepted", is_pass(r.eom), show(r))
end)

-- 2b. an empty {auth_authen} is not authentication
case("2b. an empty {auth_authen} is not authentication", function()
  local r = session{ host = "outside.example.net", ip = "127.0.0.5", auth = "", qid = "QID2b",
                     rcpts = { "user@other.org" } }
  check("{auth_authen}='' : rcpt user@other.org refused", is_refusal(r.rcpt[1]), show(r))
end)

-- 3. host:bad.host.test on the kill list
case("3. host:bad.host.test on the kill list", function()
  local r = eventually({ host = "bad.host.test", ip = "127.0.0.20", rcpts = { "user@example.com" } },
                       refused_by_mail, 1.5)
  check("kill host:bad.host.test refused by MAIL", refused_by_mail(r),
        show(r) .. " (refused at " .. tostring(r.refused) .. ")")
  mt.echo("     bad.host.test refused at " .. tostring(r.refused))
end)

-- 4. host:.evil.test matches a sub-domain host
case("4. host:.evil.test matches a sub-domain host", function()
  local r = eventually({ host = "x.evil.test", ip = "127.0.0.21", rcpts = { "user@example.com" } },
                       refused_by_mail, 1.5)
  check("kill host:.evil.test refuses x.evil.test by MAIL", refused_by_mail(r),
        show(r) .. " (refused at " .. tostring(r.refused) .. ")")
end)

-- 4b. control: a host on no list, same kind of address, is not refused
case("4b. control: a host on no list, same kind of address, is not refused", function()
  local r = session{ host = "nice.host.test", ip = "127.0.0.22", rcpts = { "user@example.com" } }
  check("unlisted host nice.host.test passes", r.refused == nil and is_pass(r.rcpt[1]), show(r))
end)

-- 5. host:good.host.test on the accept list may relay
case("5. host:good.host.test on the accept list may relay", function()
  local r = eventually({ host = "good.host.test", ip = "127.0.0.23", qid = "QID5",
                         rcpts = { "user@other.org" }, message = true },
                       function(x) return is_pass(x.rcpt[1] or 0) end, 1.5)
  check("accept host:good.host.test: rcpt user@other.org passes", is_pass(r.rcpt[1] or 0), show(r))
  check("accept host:good.host.test: end of message accepted", is_pass(r.eom or 0), show(r))
end)

print(string.format("%d passed, %d failed", passed, failed))
if failed > 0 then os.exit(1) end
os.exit(0)
