-- Creates sessions through sessiongate: `wrk -t1 ... -s preload.lua URL -- COUNT`.
-- Counts 2xx responses and stops sending after COUNT of them (wrk still runs until -d is
-- over, so run.sh sizes -d to what is left). Requests never carry a cookie, so each one
-- is a new session.
local limit = 0
local done = 0

function init(args)
   limit = tonumber(args[1]) or 0
end

function response(status, headers, body)
   if status >= 200 and status < 300 then
      done = done + 1
   end
   if done >= limit then
      wrk.thread:stop()
   end
end
