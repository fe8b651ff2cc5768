/* bus_script: the server-side Lua scripts of the bus (Redis mode).
 * BUS_PUBLISH_LUA makes a publish atomic: idempotency check, seq (never
 * below the caller's floor), recent buffer, id key and PUBLISH in one step.
 * Loaded with SCRIPT LOAD, called with EVALSHA.
 *   KEYS[1] chat:{room}:seq      KEYS[2] chat:{room}:recent (zset by seq)
 *   KEYS[3] chat:{room}:id:<id>  (absent when the publish has no client id)
 *   ARGV[1] tail  ARGV[2] recent_max  ARGV[3] id ttl (s)  ARGV[4] channel
 *   ARGV[5] floor (optional, default 0): the highest seq the calling node
 *           knows was assigned in the room; the seq key is raised to it
 *           before INCR, so a Redis that lost its data (restarted empty)
 *           never hands out a seq again.
 * Returns {seq, 0} when published, {seq_of_first, 1} for a duplicate id.
 *   With ARGV[6] == "1" (track unstored) the keys are instead
 *   KEYS[3] chat:{room}:unstored  KEYS[4] chat:unstored  KEYS[5] id key,
 *   ARGV[7] the room, and a new message is also recorded as unstored:
 *   ZADD chat:{room}:unstored <now ms> <seq>, ZADD chat:unstored NX <now> room
 *   (now from Redis TIME: one clock for every node).
 * BUS_MARK_LUA forgets stored seqs: KEYS[1] chat:{room}:unstored,
 *   KEYS[2] chat:unstored, ARGV[1] room, ARGV[2..] seqs; drops the room from
 *   the index when its set is empty.
 * BUS_SWEEP_LUA is one sweeper round: KEYS[1] chat:backfill:lock, KEYS[2]
 *   chat:unstored; ARGV[1] node token, ARGV[2] grace ms, ARGV[3] lock ms,
 *   ARGV[4] max rooms, ARGV[5] max seqs per room. Returns {0} when another
 *   node holds the lock, else {1, room, seq, entry, ...} for every seq
 *   older than the grace: entry is "<seq>\n<tail>" from the recent buffer
 *   (its score is set to now: a lease, the next try comes after another
 *   grace), or "" when the buffer no longer has it (removed: lost). The
 *   room's index score becomes its oldest remaining seq's time. It reads
 *   keys of several rooms: fine on one Redis, not on a Cluster (see
 *   docs/redis.md).
 * BUS_HEAD_LUA reads the head at a (re)subscription and raises it to the
 * node's last delivered seq: KEYS[1] seq key, ARGV[1] floor; returns the
 * value found before raising (the caller compares it with its floor). */
#define _GNU_SOURCE
#include "bus_int.h"

const char BUS_PUBLISH_LUA[] =
    "local track = ARGV[6] == '1'\n"
    "local idk = KEYS[3]\n"
    "if track then idk = KEYS[5] end\n"
    "if idk then\n"
    "  local old = redis.call('GET', idk)\n"
    "  if old then return {tonumber(old), 1} end\n"
    "end\n"
    "local floor = tonumber(ARGV[5] or '0') or 0\n"
    "if floor > 0 and (tonumber(redis.call('GET', KEYS[1]) or '0') or 0) < floor then\n"
    "  redis.call('SET', KEYS[1], ARGV[5])\n"
    "end\n"
    "local seq = redis.call('INCR', KEYS[1])\n"
    "local m = string.format('%d', seq) .. '\\n' .. ARGV[1]\n"
    "redis.call('ZADD', KEYS[2], seq, m)\n"
    "local keep = tonumber(ARGV[2])\n"
    "if redis.call('ZCARD', KEYS[2]) > keep then\n"
    "  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(keep + 1))\n"
    "end\n"
    "if idk then redis.call('SET', idk, seq, 'EX', tonumber(ARGV[3])) end\n"
    "if track then\n"
    "  local t = redis.call('TIME')\n"
    "  local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))\n"
    "  redis.call('ZADD', KEYS[3], now, string.format('%d', seq))\n"
    "  redis.call('ZADD', KEYS[4], 'NX', now, ARGV[7])\n"
    "end\n"
    "redis.call('PUBLISH', ARGV[4], m)\n"
    "return {seq, 0}\n";

const char BUS_HEAD_LUA[] =
    "local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0\n"
    "local floor = tonumber(ARGV[1]) or 0\n"
    "if cur < floor then redis.call('SET', KEYS[1], ARGV[1]) end\n"
    "return cur\n";

const char BUS_MARK_LUA[] =
    "for i = 2, #ARGV, 500 do\n"
    "  redis.call('ZREM', KEYS[1], unpack(ARGV, i, math.min(i + 499, #ARGV)))\n"
    "end\n"
    "if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) end\n"
    "return 0\n";

const char BUS_SWEEP_LUA[] =
    "if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[3]) then return {0} end\n"
    "local t = redis.call('TIME')\n"
    "local nowv = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local now = string.format('%d', nowv)\n"
    "local cut = '(' .. string.format('%d', nowv - tonumber(ARGV[2]))\n"
    "local out = {1}\n"
    "local rooms = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cut, 'LIMIT', 0, tonumber(ARGV[4]))\n"
    "for _, room in ipairs(rooms) do\n"
    "  local uk = 'chat:{' .. room .. '}:unstored'\n"
    "  local rk = 'chat:{' .. room .. '}:recent'\n"
    "  local seqs = redis.call('ZRANGEBYSCORE', uk, '-inf', cut, 'LIMIT', 0, tonumber(ARGV[5]))\n"
    "  for _, s in ipairs(seqs) do\n"
    "    local e = redis.call('ZRANGEBYSCORE', rk, s, s)\n"
    "    out[#out + 1] = room\n"
    "    out[#out + 1] = s\n"
    "    if #e > 0 then\n"
    "      redis.call('ZADD', uk, 'XX', now, s)\n"
    "      out[#out + 1] = e[1]\n"
    "    else\n"
    "      redis.call('ZREM', uk, s)\n"
    "      out[#out + 1] = ''\n"
    "    end\n"
    "  end\n"
    "  local first = redis.call('ZRANGE', uk, 0, 0, 'WITHSCORES')\n"
    "  if #first == 0 then redis.call('ZREM', KEYS[2], room)\n"
    "  else redis.call('ZADD', KEYS[2], 'XX', first[2], room) end\n"
    "end\n"
    "return out\n";
