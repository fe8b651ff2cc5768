/* bus_script: the server-side Lua scripts of the bus (Redis mode).
 * BUS_PUBLISH_LUA makes a publish atomic: idempotency check, seeding of a
 * missing head, seq (never below the caller's floor), recent buffer, id key
 * and PUBLISH in one step. Loaded with SCRIPT LOAD, called with EVALSHA.
 *   KEYS[1] chat:{room}:seq   KEYS[2] chat:{room}:recent (zset by seq)
 *   KEYS[3] chat:{room}:epoch   KEYS[4] chat:{room}:run
 *   with ARGV[6] != "0" (track unstored) also KEYS[5] chat:{room}:unstored
 *   and KEYS[6] the room's unstored index; with ARGV[8] == "1" the last key is
 *   chat:{room}:sid:<part> (bus_id_part: the sender and the id).
 *   ARGV[1] tail  ARGV[2] recent_max  ARGV[3] id ttl (s)  ARGV[4] channel
 *   ARGV[5] floor: the highest seq the calling node knows was assigned in
 *           the room; the seq key is raised to it before INCR
 *   ARGV[6] track: "0", or the publish time (ms since the epoch, the
 *           publishing node's clock) when tracking unstored
 *   ARGV[7] room  ARGV[8] has id
 *   ARGV[9] seed mode (BUS_SEED_*), followed except in mode 'N' by the
 *           run_id of the Redis process the call reaches (40 hex digits
 *           written by redis_client at every send: redis_call.run_arg,
 *           bus_seed_mode_arg; a placeholder that was not replaced is an
 *           error): 'N' no provider: a missing seq key is
 *           created at 0 (then floor) with the epoch ARGV[11] (a fresh
 *           random one); 'S' a provider exists: a missing seq or epoch key,
 *           or a head another Redis run validated, answers {0, 2} ("needs
 *           seed": nothing was changed); 'Y' the provider's answer: seq key
 *           := max(itself, ARGV[10]), epoch key := ARGV[11] if still
 *           missing, run key := this run, all only if the head still needs
 *           it (a node that seeded meanwhile wins, the key never goes back),
 *           and only after the seed's client ids are back (BUS_RESTORE_LUA
 *           below); 'E' the same for a seed that had no id to write back.
 *   The run key chat:{room}:run (declared, so that Redis Cluster answers
 *   ASK/TRYAGAIN for it while a slot migrates, like for the others) holds the run_id of the Redis process that last raised the head to the
 *   durable one. A Redis that restarted or failed over has
 *   another run_id, so a head it kept (possibly behind: an older snapshot,
 *   an AOF fsynced every second, a replica that missed the last writes) is
 *   never trusted before it was seeded again. Mode 'N' has no run key.
 *   ARGV[10] seed (modes 'Y', 'E')  ARGV[11] epoch
 *   ARGV[12] (default "publish") the command that broadcasts: "spublish" on
 *           a Cluster (the channel chat:{room}:msg hashes to the script's
 *           slot, so the sharded message leaves from the room's shard).
 *   Message updates (v2, bus.h "message updates", bus_update.c), only when
 *   ARGV[13] is given: KEYS[ARGV[13]] is the target's state hash
 *   chat:{room}:t:<target> (placed before the id key); ARGV[14] the op
 *   ('e' edit, 'd' delete, '+' react on, '-' react off), ARGV[15] the
 *   reaction field "r<emoji>\n<user>" and ARGV[16] the count field
 *   "c<emoji>" (react), ARGV[17] the seed mode ('S' a missing state, or one
 *   whose "s" field is not this Redis run's id, answers {0, 3}; 'Y' such a
 *   state is replaced by one from ARGV[18] (deleted '1'/'0') and the field
 *   pairs ARGV[19..], "s" := this run; 'N' a missing state starts empty).
 *   After the duplicate check and before INCR: a deleted target answers
 *   {0, 4}, a react that changes nothing {0, 5} (nothing is written); a
 *   delete sets "d"; a react sets or removes its field and moves its count,
 *   then the tail (open, ending with '"count":') gets the count and '}'.
 *   The state expires ARGV[3] seconds after its last update.
 * Returns {seq, 0} when published ({seq, 0, count} for a react),
 *   {seq_of_first, 1} for a duplicate id (checked first, except in modes
 *   'Y' and 'E', where the head is seeded before: a resend does not leave
 *   the seed to do again), {0, 2} when a seed is needed. A
 *   new message is also recorded as
 *   unstored when tracking: ZADD chat:{room}:unstored <now ms> <seq>, ZADD
 *   <index> NX <now> room, the index being the room's unstored index
 *   (bus_unstored_index: one per Redis, one per slot on a Cluster, on the
 *   room's slot). now is the publishing node's clock (no TIME call): a
 *   skewed clock only moves the moment a sweep looks at the entry (docs/redis.md).
 * The recent buffer is trimmed by score (= seq): entries with seq <= seq -
 *   recent_max go, so it holds the recent_max newest without a ZCARD.
 * BUS_HEAD_LUA reads a room's head and epoch (welcome, replay, subscription
 * sync), seeding or creating them like the publish script (the same run
 * key check), and raises the
 * head to the node's floor: KEYS[1] seq key, KEYS[2] epoch key, KEYS[3] run key; ARGV[1]
 * floor, ARGV[2] seed mode (with the run_id as in ARGV[9] above: 'N', 'S', 'Y', 'E', or 'P': the
 * subscription sync with a provider: a missing (or other run's) head answers {3} and creates
 * nothing, or {2} when the node has a floor to raise it to), ARGV[3] seed,
 * ARGV[4] epoch. Returns {0, head, epoch, before} (before: the value found,
 * before the floor raised it), {2} when a seed is needed ('S', or 'P' with
 * a floor), {3} when the key is missing ('P' without a floor).
 * BUS_MARK_LUA forgets stored seqs: KEYS[1] chat:{room}:unstored,
 *   KEYS[2] the room's unstored index, ARGV[1] room, ARGV[2..] seqs; drops
 *   the room from the index when its set is empty.
 * BUS_SWEEP_LUA lists one sweeper round on one server (the core then asks
 *   history, bus_handlers.on_check): KEYS[1] the lock
 *   (chat:backfill:lock, or on a Cluster the master's per-round lock);
 *   ARGV[1] node token, ARGV[2] grace ms, ARGV[3] lock ms, ARGV[4] max
 *   rooms, ARGV[5] max seqs per room, ARGV[6..] the unstored indexes to
 *   sweep (one on one Redis; on a Cluster the per-slot indexes of every slot
 *   the master owns: keys the script does not declare, which Redis allows a
 *   script without flags when they are local; an index that is not, because
 *   its slot just moved, is skipped through redis.pcall). A room's keys
 *   share its index's slot, so they are local too. Returns {0} when another
 *   node holds the lock; else it changes nothing but the lock (and drops
 *   rooms with nothing old from the index, and what can never be settled:
 *   an index member that is not a valid room name (room_name_valid, with
 *   its set; listed as (room, '')), a room whose unstored key has another
 *   type (not ours: the room leaves the index, the key stays; listed as
 *   (room, '')), a member of a room's set that is not a
 *   seq (seq_parse's rule: 1 to 19 digits, no leading zero, at most
 *   2^63-1; listed as (room, '')): the core
 *   counts those malformed pairs) and returns {1, more, cut, room,
 *   seq, room, seq, ...}, the (room, seq) of every entry older than the
 *   grace (at most ARGV[4] rooms, ARGV[5] seqs per room; one more of each
 *   is read to know whether there is more): more = the limits the round
 *   cut short (sweep again at once): + 1 (BUS_MORE_ROOMS) when an old room
 *   was left unlisted, + 2 (BUS_MORE_PER_ROOM) when a room had more than
 *   ARGV[5] old seqs; cut
 *   = the round's Redis time minus the grace (the listed entries are scored
 *   below it).
 * BUS_SETTLE_LUA ends a round with history's answer (one call per
 *   BUS_SETTLE_CHUNK pairs of it): ARGV[1] the round's cut, then per room:
 *   room, index, n stored, the n stored seqs, m missing, the m missing
 *   seqs. The stored ones leave chat:{room}:unstored in one ZREM (n <=
 *   BUS_SETTLE_CHUNK, within what unpack can push: bus_int.h); a
 *   missing one still scored below the cut (nobody offered it since the
 *   round listed it: a round whose check outlived the lock may have been
 *   followed by another node's round, which leased it or found it lost) is
 *   answered with its entry "<seq>\n<tail>" from the recent buffer (its
 *   score set to now: a lease, the next try comes after another grace), or
 *   "" when the buffer no longer has it (removed: lost); one scored at or
 *   above the cut, or gone, is skipped: {room, seq, entry, ...}. The room's
 *   index score becomes its oldest remaining seq's time (or the room leaves
 *   the index). Keys undeclared and local, as for the sweep.
 * BUS_FORGET_LUA forgets a client id whose seq could not be stored:
 *   KEYS[1] chat:{room}:sid:<part>, ARGV[1] seq; deletes it if it still maps
 *   to that seq.
 * BUS_UNDO_LUA undoes one message update history did not take, in its
 *   target's state (bus_undo_update): KEYS[1] chat:{room}:t:<target>,
 *   ARGV[1] the update's op ('d', '+', '-'), ARGV[2] a react's field
 *   "r<emoji>\n<user>", ARGV[3] its count field "c<emoji>". A state that
 *   is gone is left alone (seeded from history when next needed); 'd'
 *   drops the deleted mark; '+' drops the field and, if it was there,
 *   counts one less; '-' sets the field back and, if it was not there,
 *   counts one more. Only the update's own change: the other updates the
 *   state holds stay. Returns 1 when something changed, else 0.
 * BUS_RESTORE_LUA writes a seed's stored client ids back (before the node's
 *   first 'Y' call with that seed; one call per BUS_RESTORE_CHUNK ids, at
 *   least one): KEYS[1] the run key chat:{room}:run, KEYS[2..] the ids'
 *   keys chat:{room}:sid:<part> (one slot: the room's); ARGV[1] the call's
 *   place, followed by the run_id (run_arg, as ARGV[9] of the publish
 *   script): 'O' the only call, 'F' the first of several, 'C' a middle one,
 *   'L' the last; ARGV[2k], ARGV[2k + 1] the seq and the ttl (s, what is
 *   left of the id's window) of KEYS[k + 1]. Each key is SET NX: one that
 *   exists (survived, or written meanwhile by a publish) is kept. Unless
 *   the run key already holds this run or "i<run_id>", 'O' marks it
 *   "i<run_id>" (every id of the seed is back: restored in this run) and
 *   'F' marks it "p<run_id>" (partly back); 'C' and 'L' need one of the
 *   three (else an error: Redis restarted between the calls, the seed
 *   fails), and 'L' turns "p<run_id>" into "i<run_id>" once its ids are
 *   written. Mode 'Y' of the publish and head scripts seeds only a run key
 *   that holds this run or "i<run_id>", else answers "needs seed" ({0, 2},
 *   {2}): neither a restore that reached an earlier run of the Redis nor one
 *   still under way (another node's chunks not all written) lets a head of
 *   this run be seeded. Mode 'E' is 'Y' for a seed that found no client id
 *   to write back (no restore call was made: a new room's first use costs
 *   no extra Redis call): it seeds whatever the run key holds, since a
 *   Redis lost meanwhile loses nothing of it. Mode 'S' treats both marks
 *   like any other run: needs seed. Returns 0. (The run key at this run or
 *   "i<run_id>" thus always means: some node wrote back every id its seed
 *   query found, or found none.) */
#define _GNU_SOURCE
#include "bus_int.h"
#include "redis_slot.h"
#include <stdio.h>

/* Lua the publish and head scripts share. LUA_RUN_PARSE: the run_id that
 * follows the seed mode in arg (into run; rk names the run key), or an
 * error for one that is not hex. LUA_SEED_HEAD: inside "the head needs a
 * seed", modes 'Y'/'E' seed KEYS[1] (the seq key) from seed (the durable
 * head: never lowered) and set the run key, 'Y' only past a run key at this
 * run or "i<run_id>" (else returns needs, "needs seed"); other modes
 * create a missing head at 0. */
#define LUA_RUN_PARSE(arg, key) \
    "if #" arg " > 1 then\n" \
    "  run = string.sub(" arg ", 2)\n" \
    "  if not string.match(run, '^%x+$') then return redis.error_reply('ERR chatd: no run id') end\n" \
    "  rk = " key "\n" \
    "end\n"
#define LUA_SEED_HEAD(seed, needs) \
    "  if mode == 'Y' or mode == 'E' then\n" \
    "    if mode == 'Y' and h[3] ~= run and h[3] ~= 'i' .. run then return " needs " end\n" \
    "    if (not cur) or (tonumber(cur) or 0) < tonumber(" seed ") then\n" \
    "      cur = " seed "\n" \
    "      redis.call('SET', KEYS[1], cur)\n" \
    "    end\n" \
    "    redis.call('SET', rk, run)\n" \
    "  elseif not cur then\n" \
    "    cur = '0'\n" \
    "    redis.call('SET', KEYS[1], cur)\n" \
    "  end\n"

const char BUS_PUBLISH_LUA[] =
    "local idk = nil\n"
    "if ARGV[8] == '1' then idk = KEYS[#KEYS] end\n"
    "local mode, run, rk = string.sub(ARGV[9], 1, 1), nil, nil\n"
    /* a duplicate answers before anything is written, except that a seed
     * ('Y', 'E': the node holds the durable head) first seeds the head, so
     * a resend that is a room's first use after a Redis loss does not
     * leave the next message a seed to do again */
    "local given = mode == 'Y' or mode == 'E'\n"
    "if idk and not given then\n"
    "  local old = redis.call('GET', idk)\n"
    "  if old then return {tonumber(old), 1} end\n"
    "end\n"
    LUA_RUN_PARSE("ARGV[9]", "KEYS[4]")
    "local h = redis.call('MGET', KEYS[1], KEYS[3], KEYS[4])\n"
    "local cur = h[1]\n"
    "if (not cur) or (not h[2]) or (mode ~= 'N' and h[3] ~= run) then\n"
    "  if mode == 'S' then return {0, 2} end\n"
    LUA_SEED_HEAD("ARGV[10]", "{0, 2}")
    "  redis.call('SET', KEYS[3], ARGV[11], 'NX')\n"
    "end\n"
    "if idk and given then\n"
    "  local old = redis.call('GET', idk)\n"
    "  if old then return {tonumber(old), 1} end\n"
    "end\n"
    "local tail = ARGV[1]\n"
    "local count = nil\n"
    "if ARGV[13] then\n"
    "  local st = KEYS[tonumber(ARGV[13])]\n"
    "  local op = ARGV[14]\n"
    "  local ok\n"
    "  if ARGV[17] == 'N' or not run then ok = redis.call('EXISTS', st) == 1\n"
    "  else ok = redis.call('HGET', st, 's') == run end\n"
    "  if not ok then\n"
    "    if ARGV[17] == 'S' then return {0, 3} end\n"
    "    redis.call('DEL', st)\n"
    "    redis.call('HSET', st, 's', run or '1')\n"
    "    if ARGV[17] == 'Y' and ARGV[18] == '1' then redis.call('HSET', st, 'd', '1') end\n"
    "    for i = 19, #ARGV, 2 do\n"
    "      if redis.call('HSETNX', st, ARGV[i], '1') == 1 then\n"
    "        redis.call('HINCRBY', st, ARGV[i + 1], 1)\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  if redis.call('HEXISTS', st, 'd') == 1 then return {0, 4} end\n"
    "  if op == 'd' then\n"
    "    redis.call('HSET', st, 'd', '1')\n"
    "  elseif op == '+' then\n"
    "    if redis.call('HSETNX', st, ARGV[15], '1') == 0 then return {0, 5} end\n"
    "    count = redis.call('HINCRBY', st, ARGV[16], 1)\n"
    "  elseif op == '-' then\n"
    "    if redis.call('HDEL', st, ARGV[15]) == 0 then return {0, 5} end\n"
    "    count = redis.call('HINCRBY', st, ARGV[16], -1)\n"
    "  end\n"
    "  redis.call('EXPIRE', st, tonumber(ARGV[3]))\n"
    "  if count then tail = tail .. string.format('%d', count) .. '}' end\n"
    "end\n"
    "if ARGV[5] ~= '0' and (tonumber(cur) or 0) < tonumber(ARGV[5]) then\n"
    "  redis.call('SET', KEYS[1], ARGV[5])\n"
    "end\n"
    "local seq = redis.call('INCR', KEYS[1])\n"
    "local m = seq .. '\\n' .. tail\n"
    "redis.call('ZADD', KEYS[2], seq, m)\n"
    "local keep = tonumber(ARGV[2])\n"
    "if seq > keep then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', seq - keep) end\n"
    "if idk then redis.call('SET', idk, seq, 'EX', ARGV[3]) end\n"
    "if ARGV[6] ~= '0' then\n"
    "  redis.call('ZADD', KEYS[5], ARGV[6], seq)\n"
    "  redis.call('ZADD', KEYS[6], 'NX', ARGV[6], ARGV[7])\n"
    "end\n"
    "redis.call(ARGV[12] or 'publish', ARGV[4], m)\n"
    "if count then return {seq, 0, count} end\n"
    "return {seq, 0}\n";

const char BUS_HEAD_LUA[] =
    "local mode, run, rk = string.sub(ARGV[2], 1, 1), nil, nil\n"
    LUA_RUN_PARSE("ARGV[2]", "KEYS[3]")
    "local h = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3])\n"
    "local cur, ep = h[1], h[2]\n"
    "if (not cur) or (not ep) or (run and h[3] ~= run) then\n"
    "  if mode == 'S' then return {2} end\n"
    "  if mode == 'P' then\n"
    "    if (tonumber(ARGV[1]) or 0) > 0 then return {2} end\n"
    "    return {3}\n"
    "  end\n"
    LUA_SEED_HEAD("ARGV[3]", "{2}")
    "  if not ep then\n"
    "    ep = ARGV[4]\n"
    "    redis.call('SET', KEYS[2], ep)\n"
    "  end\n"
    "end\n"
    "local before = tonumber(cur) or 0\n"
    "local head = before\n"
    "local floor = tonumber(ARGV[1]) or 0\n"
    "if head < floor then\n"
    "  redis.call('SET', KEYS[1], ARGV[1])\n"
    "  head = floor\n"
    "end\n"
    "return {0, head, ep, before}\n";

const char BUS_MARK_LUA[] =
    "for i = 2, #ARGV, 500 do\n"
    "  redis.call('ZREM', KEYS[1], unpack(ARGV, i, math.min(i + 499, #ARGV)))\n"
    "end\n"
    "if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) end\n"
    "return 0\n";

#define STR_LUA_(x) #x
#define STR_LUA(x) STR_LUA_(x)

/* Lua of the sweep and the settle scripts, with the names they share (room,
 * uk, idx): LUA_REINDEX_ROOM re-scores the room in its slot's index by its
 * oldest unstored seq, or drops it when it has none. */
#define LUA_REINDEX_ROOM \
    "local first = redis.call('ZRANGE', uk, 0, 0, 'WITHSCORES')\n" \
    "if #first == 0 then redis.call('ZREM', idx, room)\n" \
    "else redis.call('ZADD', idx, 'XX', first[2], room) end\n"

const char BUS_SWEEP_LUA[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "if cur and cur ~= ARGV[1] then return {0} end\n"
    "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])\n"
    "local t = redis.call('TIME')\n"
    "local nowv = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local cutv = nowv - tonumber(ARGV[2])\n"
    "local cut = '(' .. string.format('%d', cutv)\n"
    "local out = {1, 0, cutv}\n"
    "local budget = tonumber(ARGV[4])\n"
    "local per = tonumber(ARGV[5])\n"
    "local mr, mp = 0, 0\n"
    "for i = 6, #ARGV do\n"
    "  local idx = ARGV[i]\n"
    "  if redis.pcall('EXISTS', idx) == 1 then\n"
    "    local rooms = redis.call('ZRANGEBYSCORE', idx, '-inf', cut, 'LIMIT', 0, budget + 1)\n"
    "    local nr = math.min(#rooms, budget)\n"
    "    if #rooms > nr then mr = 1 end\n"
    "    for r = 1, nr do\n"
    "      local room = rooms[r]\n"
    /* an index member no room can have: dropped with its set (pcall: on a
     * Cluster that key need not be local), listed as (room, '') */
    "      if #room > " STR_LUA(CHAT_ROOM_MAX) " or not string.match(room, '^[%w_.-]+$') then\n"
    "        redis.call('ZREM', idx, room)\n"
    "        redis.pcall('DEL', 'chat:{' .. room .. '}:unstored')\n"
    "        out[#out + 1] = room\n"
    "        out[#out + 1] = ''\n"
    "      else\n"
    "        local uk = 'chat:{' .. room .. '}:unstored'\n"
    /* pcall: on a Cluster the set may have left with its slot while the
     * index has not yet (a migration): the room is skipped this round */
    "        local ty = redis.pcall('TYPE', uk)\n"
    "        ty = type(ty) == 'table' and ty['ok'] or nil\n"
    "        if not ty then\n"
    /* a set of another type (not ours: another program's key) would fail
     * this round, and so every round, for every room: the room leaves the
     * index, its key is left alone, listed as (room, '') */
    "        elseif ty ~= 'zset' and ty ~= 'none' then\n"
    "          redis.call('ZREM', idx, room)\n"
    "          out[#out + 1] = room\n"
    "          out[#out + 1] = ''\n"
    "        else\n"
    "        local seqs = redis.call('ZRANGEBYSCORE', uk, '-inf', cut, 'LIMIT', 0, per + 1)\n"
    "        local ns = math.min(#seqs, per)\n"
    "        if #seqs > ns then mp = 2 end\n"
    "        local bad = 0\n"
    "        for k = 1, ns do\n"
    /* a member no seq can be (util.h seq_parse's rule: 1 to 19 digits
     * without a leading zero, at most 2^63-1; equal-length digit strings
     * compare as numbers): removed, listed as (room, '') */
    "          local s = seqs[k]\n"
    "          if #s > 19 or not string.match(s, '^[1-9]%d*$') or\n"
    "             (#s == 19 and s > '9223372036854775807') then\n"
    "            redis.call('ZREM', uk, s)\n"
    "            bad = bad + 1\n"
    "            s = ''\n"
    "          end\n"
    "          out[#out + 1] = room\n"
    "          out[#out + 1] = s\n"
    "        end\n"
    "        if ns == bad then\n"
    LUA_REINDEX_ROOM
    "        end\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "    budget = budget - nr\n"
    "    if mr == 1 then break end\n"
    "  end\n"
    "end\n"
    "out[2] = mr + mp\n"
    "return out\n";

const char BUS_SETTLE_LUA[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local cut = tonumber(ARGV[1])\n"
    "local out = {}\n"
    "local i = 2\n"
    "while i <= #ARGV do\n"
    "  local room, idx, ns = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])\n"
    "  local uk = 'chat:{' .. room .. '}:unstored'\n"
    "  local rk = 'chat:{' .. room .. '}:recent'\n"
    "  i = i + 3\n"
    "  if ns > 0 then redis.call('ZREM', uk, unpack(ARGV, i, i + ns - 1)) end\n"
    "  i = i + ns\n"
    "  local nm = tonumber(ARGV[i])\n"
    "  i = i + 1\n"
    "  for j = i, i + nm - 1 do\n"
    "    local s = ARGV[j]\n"
    "    local sc = redis.call('ZSCORE', uk, s)\n"
    "    if sc and tonumber(sc) < cut then\n"
    /* offered: its entry, leased (scored now); or '' when the recent
     * buffer no longer has it (forgotten: lost) */
    "      local e = redis.call('ZRANGEBYSCORE', rk, s, s)\n"
    "      out[#out + 1] = room\n"
    "      out[#out + 1] = s\n"
    "      if #e > 0 then\n"
    "        redis.call('ZADD', uk, 'XX', now, s)\n"
    "        out[#out + 1] = e[1]\n"
    "      else\n"
    "        redis.call('ZREM', uk, s)\n"
    "        out[#out + 1] = ''\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  i = i + nm\n"
    LUA_REINDEX_ROOM
    "end\n"
    "return out\n";

const char BUS_FORGET_LUA[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end\n"
    "return 0\n";

const char BUS_RESTORE_LUA[] =
    "local place, run = string.sub(ARGV[1], 1, 1), string.sub(ARGV[1], 2)\n"
    "if not string.match(run, '^%x+$') then return redis.error_reply('ERR chatd: no run id') end\n"
    "local cur = redis.call('GET', KEYS[1])\n"
    "local done = cur == run or cur == 'i' .. run\n"
    "if place == 'O' or place == 'F' then\n"
    "  if not done then redis.call('SET', KEYS[1], (place == 'O' and 'i' or 'p') .. run) end\n"
    "elseif not done and cur ~= 'p' .. run then\n"
    "  return redis.error_reply('ERR chatd: restore met another run')\n"
    "end\n"
    "for i = 2, #KEYS do\n"
    "  redis.call('SET', KEYS[i], ARGV[2 * i - 2], 'EX', ARGV[2 * i - 1], 'NX')\n"
    "end\n"
    "if place == 'L' and cur == 'p' .. run then redis.call('SET', KEYS[1], 'i' .. run) end\n"
    "return 0\n";

const char BUS_UNDO_LUA[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
    "local op = ARGV[1]\n"
    "if op == 'd' then return redis.call('HDEL', KEYS[1], 'd') end\n"
    "if op == '+' and redis.call('HDEL', KEYS[1], ARGV[2]) == 1 then\n"
    "  redis.call('HINCRBY', KEYS[1], ARGV[3], -1)\n"
    "  return 1\n"
    "end\n"
    "if op == '-' and redis.call('HSETNX', KEYS[1], ARGV[2], '1') == 1 then\n"
    "  redis.call('HINCRBY', KEYS[1], ARGV[3], 1)\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

const char *const BUS_SCRIPTS[BUS_S_COUNT] = {BUS_PUBLISH_LUA, BUS_HEAD_LUA, BUS_MARK_LUA,
                                              BUS_SWEEP_LUA, BUS_FORGET_LUA, BUS_SETTLE_LUA,
                                              BUS_RESTORE_LUA, BUS_UNDO_LUA};

void bus_unstored_index(char *out, size_t n, int cluster, const char *room)
{
    if (cluster) snprintf(out, n, "chat:{%s}:unstored", redis_slot_tag(redis_room_slot(room)));
    else snprintf(out, n, "chat:unstored");
}
