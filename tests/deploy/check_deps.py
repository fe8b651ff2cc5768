#!/usr/bin/python3
"""tests/deploy/check_deps.py: tools/deps.sh must name every program and module
the scripts call, so that ./test.sh works on a fresh Debian 12 and not only on
a machine that happens to have the package already.

It reads the scripts (it runs nothing of them) and extracts:
  - shell (test.sh, run.sh, .ci/run, tools/*.sh, tests/**/*.sh, deploy/nginx/
    render.sh, loadtest/build.sh, loadtest/scenarios/*.sh): the word at
    command position of each simple command (after `|`, `;`, `&&`, `$(`,
    `if`, `then`, `do`, ..., behind assignments and through the wrappers
    env/exec/timeout/runuser/sudo/nice/nohup/command -v and our check/run_counted),
    and the imports of Python fed to /usr/bin/python3 by a heredoc;
  - python (tests/**/*.py, tools/*.py, loadtest/**/*.py): the first element of
    literal subprocess argument lists, shutil.which("..."), wrap=["..."],
    os.path.join(PGBIN, "..."), and the imports that are not in the standard
    library nor a module of the repo;
  - javascript (tests/browser/*.mjs): spawn/spawnSync/startProc programs,
    executablePath, and the npm modules imported (must be in package.json);
  - lua (spec/): require "..." of modules that are not the repo's own;
  - cmake: add_test COMMAND programs, find_program names, pkg_check_modules
    modules (pc: entries).
Each must be in a *_CMDS array of tools/deps.sh (any purpose), a bash builtin
or keyword, a function defined in the scanned shell files, or ALLOW below (a
short list of programs every Debian 12 has, each with its package).
Fails (exit 1) naming file:line of each one that is not. A heuristic: it errs
towards reporting; a false positive goes in ALLOW or IGNORE with its reason.
  /usr/bin/python3 tests/deploy/check_deps.py            the check (about 0.2 s)
  /usr/bin/python3 tests/deploy/check_deps.py --verify-allowlist
        also asks dpkg/apt-cache that each ALLOW command comes from the package
        named and that the package is Essential or Priority: required
  /usr/bin/python3 tests/deploy/check_deps.py --list   every name found, with where
"""
import glob
import json
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PGBIN = "/usr/lib/postgresql/15/bin"

# Programs that every Debian 12 has: packages that are Essential: yes or
# Priority: required (a debootstrap --variant=minbase, the debian:12 image).
# procps, iproute2 (important), curl, git, binutils (optional) are NOT here:
# a script that calls them needs a CMDS entry. --verify-allowlist checks this.
ALLOW = {
    "coreutils": "basename cat chmod chown cmp_ cp cut date dirname env false head id ln ls md5sum "
                 "mkdir mktemp mv nohup nproc od readlink realpath rm rmdir sha256sum sleep sort "
                 "stat stdbuf tail tee touch tr true uname uniq wc base64 timeout nice seq yes "
                 "printf echo test [ kill_ sync du df chroot",
    "diffutils": "cmp diff",
    "findutils": "find xargs",
    "grep": "grep egrep",
    "sed": "sed",
    "mawk": "awk",                  # /usr/bin/awk is mawk through alternatives
    "bash": "bash",
    "dash": "sh",
    "util-linux": "runuser prlimit taskset chrt setsid flock unshare nsenter",
    "mount": "mount umount",
    "libc-bin": "ldd getent",
    "dpkg": "dpkg dpkg-query dpkg-deb",
    "apt": "apt-get",               # deps.sh itself installs with it
    "tar": "tar",
    "gzip": "gzip",
    "hostname": "hostname",
    "debianutils": "which",
}
# (cmp_ / kill_: placeholders that are not commands; kill is a bash builtin)
ALLOWED = {c: p for p, cs in ALLOW.items() for c in cs.split() if not c.endswith("_")}

# Command words that are not programs a package must provide, with the reason.
IGNORE = {
    "sudo": "tools/deps.sh only, when not root; it says so when sudo is missing",
    "chatd": "the binary we build (build/chatd)",
}
# Scripts not scanned: none today. (tools/deps.sh is scanned too.)

# Programs that a listed program runs itself, which a scan of our scripts cannot see:
# command -> [(regex the calling line must match, program it then runs, why)].
# (Found on a fresh bookworm chroot, tools/fresh-debian.sh: `systemd-analyze verify`
# failed with "Command 'man systemd.exec(5)' failed" where man-db is not installed.)
HIDDEN = {
    "systemd-analyze": [(r"\bverify\b(?!.*--man=no)", "man",
                         "verify runs man for each Documentation=man: link (--man=no skips it)")],
}
# Debian 12's nodejs (tools/deps.sh installs it when no other node is there): every
# package of tests/browser/package-lock.json must accept it (engines.node). playwright-core
# 1.62+ says >=20 and refuses to start on 18 ("Playwright requires Node.js 20 or higher").
DEBIAN_NODE = (18, 20, 4)

BUILTINS = set("""
. : [ [[ ]] alias bg bind break builtin caller case cd command compgen complete compopt continue
declare dirs disown do done echo elif else enable esac eval exec exit export false fc fg fi for
function getopts hash help history if in jobs kill let local logout mapfile popd printf pushd pwd
read readarray readonly return select set shift shopt source suspend test then time times trap
true type typeset ulimit umask unalias unset until wait while { } !
""".split())

# functions whose arguments are a command: file -> {name: how many words come first}
CMD_WRAPPERS = {"tests/deploy/run.sh": {"check": 1}, "test.sh": {"run_counted": 1}}
SHELL_KEYWORDS_BEFORE_CMD = {"if", "then", "else", "elif", "do", "while", "until", "!", "{", "time", "exec"}


BAD_ENTRIES = []


def deps_entries():
    """command and module names of every *_CMDS=( ... ) array of tools/deps.sh"""
    text = open(os.path.join(ROOT, "tools", "deps.sh")).read()
    cmds, py, lua, pc = set(), set(), set(), set()
    for m in re.finditer(r"^\s*[A-Z_]+_CMDS=\(([^)]*)\)", text, re.M):
        body = re.sub(r"#[^\n]*", "", m.group(1))
        for e in body.split():
            e = e.strip('"').replace("$PGBIN", PGBIN)
            # the form deps.sh's have() understands: [py:|lua:|pc:]name:package,
            # fuzzer:package (a "pc:libuv" is checked as the command `pc`)
            if not re.fullmatch(r"(?:(?:py|lua|pc):[\w.+-]+|fuzzer|/[\w./+-]+|(?!(?:py|lua|pc):)[\w.+-]+):[a-z0-9][a-z0-9.+-]+", e):
                BAD_ENTRIES.append(f"tools/deps.sh:{text.count(chr(10), 0, m.start()) + 1}: CMDS entry "
                                   f"'{e}' is not [py:|lua:|pc:]name:package (or fuzzer:package)")
            what = e.rsplit(":", 1)[0]
            if what.startswith("py:"):
                py.add(what[3:])
            elif what.startswith("lua:"):
                lua.add(what[4:])
            elif what.startswith("pc:"):
                pc.add(what[3:])
            elif what == "fuzzer":
                pass
            else:
                cmds.add(what)
                if what.startswith("/"):
                    cmds.add(os.path.basename(what))
    return cmds, py, lua, pc


# ------------------------------------------------------------------ shell lexer
class Tok:
    __slots__ = ("kind", "text", "line", "dyn")

    def __init__(self, kind, text, line, dyn=False):
        self.kind, self.text, self.line, self.dyn = kind, text, line, dyn


def lex_shell(src):
    """tokens: ('w', word) with dyn=True when it has an unquoted/quoted expansion,
    ('op', sep) for separators; command substitutions are lexed inline, opened
    and closed by separators. Heredoc bodies are returned apart."""
    toks, heredocs = [], []   # heredocs: (line of <<, body, delimiter)
    subs = []                 # token lists of the command substitutions
    i, n, line = 0, len(src), 1
    word, dyn, have = [], False, False
    stack = ["c"]             # c: commands, d: double quotes, c$: inside $( )
    saved = []                # per open $(: the outer (toks, word, dyn, have)
    pending = []              # heredoc delimiters waiting for the end of the line

    def open_sub():
        nonlocal toks, word, dyn, have
        saved.append((toks, word, dyn, have))
        toks, word, dyn, have = [], [], False, False
        stack.append("c$")

    def close_sub():
        nonlocal toks, word, dyn, have
        flush()
        subs.append(toks)
        toks, word, dyn, have = saved.pop()
        word.append("$")
        dyn = have = True
        stack.pop()

    def flush():
        nonlocal word, dyn, have
        if have:
            toks.append(Tok("w", "".join(word), line, dyn))
        word, dyn, have = [], False, False

    def skip_braces(j):       # src[j] == '{' after '$': to the matching '}'
        d = 0
        while j < n:
            if src[j] == "{":
                d += 1
            elif src[j] == "}":
                d -= 1
                if d == 0:
                    return j + 1
            j += 1
        return j

    def skip_arith(j):        # src[j:j+3] == '$((' : to the matching '))'
        d = 0
        while j < n:
            if src[j] == "(":
                d += 1
            elif src[j] == ")":
                d -= 1
                if d == 0:
                    return j + 1
            elif src[j] == "\n":
                pass
            j += 1
        return j

    while i < n:
        c = src[i]
        top = stack[-1]
        if top == "d":
            if c == '"':
                stack.pop()
                i += 1
            elif c == "\\":
                word.append(src[i + 1:i + 2])
                i += 2
            elif src.startswith("$((", i):
                j = skip_arith(i + 1)
                line += src.count("\n", i, j)
                word.append("$")
                dyn = True
                i = j
            elif src.startswith("$(", i):
                open_sub()            # a command substitution inside quotes
                i += 2
            elif src.startswith("${", i):
                j = skip_braces(i + 1)
                word.append("$")
                dyn = True
                i = j
            elif c == "$":
                word.append("$")
                dyn = True
                i += 1
            else:
                if c == "\n":
                    line += 1
                word.append(c)
                i += 1
            continue
        # command context ("c" or "c$" inside $( ))
        if c == "\n":
            flush()
            toks.append(Tok("op", ";", line))
            line += 1
            i += 1
            for delim in pending:          # heredoc bodies follow this line
                start = i
                body_line = line
                while i < n:
                    e = src.find("\n", i)
                    e = n if e < 0 else e
                    if src[i:e].strip() == delim:
                        heredocs.append((body_line, src[start:i], delim))
                        line += 1
                        i = e + 1
                        break
                    line += 1
                    i = e + 1
            pending = []
            continue
        if c in " \t":
            flush()
            i += 1
            continue
        if c == "#" and not have:
            e = src.find("\n", i)
            i = n if e < 0 else e
            continue
        if c == "\\":
            if src[i + 1:i + 2] == "\n":
                line += 1
            else:
                word.append(src[i + 1:i + 2])
                have = True
            i += 2
            continue
        if c == "'":
            e = src.find("'", i + 1)
            e = n if e < 0 else e
            word.append(src[i + 1:e])
            line += src.count("\n", i, e)
            have = True
            i = e + 1
            continue
        if c == '"':
            stack.append("d")
            have = True
            i += 1
            continue
        if src.startswith("$((", i):
            j = skip_arith(i + 1)
            line += src.count("\n", i, j)
            word.append("$")
            dyn = have = True
            i = j
            continue
        if src.startswith("$(", i):
            open_sub()
            i += 2
            continue
        if src.startswith("((", i) and not have:
            j = skip_arith(i)         # (( i++ )), for ((...)): no command in it
            line += src.count("\n", i, j)
            i = j + 1
            continue
        if src.startswith("${", i):
            i = skip_braces(i + 1)
            word.append("$")
            dyn = have = True
            continue
        if c == "$":
            word.append("$")
            dyn = have = True
            i += 1
            continue
        if c == ")" and top == "c$" and not case_open(toks):
            close_sub()
            i += 1
            continue
        if c in "<>":
            # a redirection: a number before it is its fd; the next word is its target
            if have and "".join(word).isdigit() and not dyn:
                word, have = [], False
            flush()
            m = re.match(r"<<<|<<-?|<>|>>|>&|<&|>\||<|>", src[i:])
            op = m.group(0)
            i += len(op)
            if op in ("<<", "<<-"):
                m2 = re.match(r"\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1", src[i:])
                if m2:
                    pending.append(m2.group(2))
                    toks.append(Tok("op", "heredoc", line))
                    toks.append(Tok("w", m2.group(2), line))
                    i += m2.end()
                    continue
            if op in (">&", "<&") or src[i:i + 1] == "&":
                if src[i:i + 1] == "&":
                    i += 1
            toks.append(Tok("op", "redir", line))
            continue
        if c == "&" and src[i + 1:i + 2] == ">":
            flush()
            i += 2 + (src[i + 2:i + 3] == ">")
            toks.append(Tok("op", "redir", line))
            continue
        if c in ";&|()":
            flush()
            if src.startswith(";;", i) or src.startswith("&&", i) or src.startswith("||", i):
                toks.append(Tok("op", src[i:i + 2], line))
                i += 2
            else:
                toks.append(Tok("op", c, line))
                i += 1
            continue
        word.append(c)
        have = True
        i += 1
    flush()
    while saved:
        close_sub()
    return [toks] + subs, heredocs


def case_open(toks):
    """a `case` inside this $( ) whose pattern `)` is still to come"""
    depth = 0
    for t in toks:
        if t.kind == "w" and t.text == "case":
            depth += 1
        elif t.kind == "w" and t.text == "esac":
            depth -= 1
    return depth > 0 and toks and toks[-1].kind == "w" and toks[-1].text != "esac" and \
        any(t.kind == "w" and t.text == "in" for t in toks)


def shell_commands(toks, wrappers):
    """(line, word) at command position; the function names defined"""
    out, funcs = [], set()
    expect_cmd = True
    skip_words = 0            # words of a wrapper before its command
    in_case = 0               # case ... in: 1 waiting for `in`, 2 in a pattern
    in_test = False           # [[ ... ]]
    in_for = False
    wrapper = None
    prev = None
    in_array = False          # X=( ... ): words of an array, not commands
    for k, t in enumerate(toks):
        nxt = toks[k + 1] if k + 1 < len(toks) else None
        if in_array:
            if t.kind == "op" and t.text == ")":
                in_array = False
            continue
        if t.kind == "w" and re.match(r"^[A-Za-z_][A-Za-z0-9_]*\+?=$", t.text) and \
                nxt is not None and nxt.kind == "op" and nxt.text == "(":
            in_array = True
            toks[k + 1] = Tok("w", "", nxt.line)   # (the "(" is the array's)
            continue
        if t.kind == "op":
            if t.text == "redir" or t.text == "heredoc":
                prev = t
                continue
            if in_case == 2 and t.text == ")":
                in_case = 3
                expect_cmd = True
                continue
            if t.text == ";;":
                in_case = 2 if in_case else 0
            if in_for and t.text == ";":
                in_for = False
            expect_cmd, wrapper, skip_words = True, None, 0
            prev = t
            continue
        w = t.text
        if prev is not None and prev.kind == "op" and prev.text in ("redir", "heredoc"):
            prev = t
            continue          # a redirection target
        prev = t
        if in_test:
            if w == "]]":
                in_test = False
            continue
        if in_case == 1:
            if w == "in":
                in_case = 2
            continue
        if in_case == 2:
            if w == "esac":
                in_case = 0
                expect_cmd = False
            continue          # a pattern word
        if in_for:
            continue
        if not expect_cmd:
            if w == "esac" and in_case:
                in_case = 0
            continue
        if skip_words > 0:
            skip_words -= 1
            continue
        if wrapper is not None and w.startswith("-") and not t.dyn:
            # options of env/timeout/nice/runuser...; those taking a value
            if wrapper in ("env",) and w in ("-u", "--unset", "-C", "--chdir"):
                skip_words = 1
            elif wrapper == "timeout" and w in ("-k", "-s", "--kill-after", "--signal"):
                skip_words = 1
            elif wrapper == "nice" and w == "-n":
                skip_words = 1
            elif wrapper == "runuser" and w in ("-u", "-g", "-G"):
                skip_words = 1
            continue
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=", w):
            continue          # an assignment before the command
        if wrapper == "timeout" and re.match(r"^[0-9.$]+[smhd]?$", w):
            wrapper = None    # the duration; the command follows
            continue
        if w == "case":
            in_case = 1
            continue
        if w == "[[":
            in_test = True
            continue
        if w in ("for", "select"):
            in_for = True
            continue
        if w == "esac" or w in ("fi", "done", "}"):
            continue
        if w in SHELL_KEYWORDS_BEFORE_CMD:
            continue
        if w == "function":
            if nxt is not None and nxt.kind == "w":
                funcs.add(nxt.text)
            expect_cmd = False
            continue
        if nxt is not None and nxt.kind == "op" and nxt.text == "(" and not t.dyn:
            t2 = toks[k + 2] if k + 2 < len(toks) else None
            if t2 is not None and t2.kind == "op" and t2.text == ")":
                funcs.add(w)  # name() { ...
                expect_cmd = False
                continue
        out.append((t.line, w, t.dyn))
        expect_cmd = False
        wrapper = None
        if not t.dyn:
            if w in ("env", "timeout", "nice", "nohup", "sudo", "runuser", "exec", "stdbuf", "setsid"):
                expect_cmd, wrapper = True, w
            elif w == "command":
                expect_cmd, wrapper = True, "command"   # command -v X: X is needed too
            elif w in wrappers:
                expect_cmd, skip_words = True, wrappers[w]
    return out, funcs


# ------------------------------------------------------------------ python
PY_CALL = re.compile(r"(?:subprocess\.(?:run|Popen|call|check_call|check_output)\s*\(\s*(?:self\._as_pg\()?"
                     r"|to_thread\(\s*subprocess\.\w+\s*,\s*|wrap=)\[\s*(['\"])([^'\"]+)\1")
PY_WHICH = re.compile(r"shutil\.which\(\s*(['\"])([^'\"]+)\1")
PY_PGBIN = re.compile(r"os\.path\.join\(\s*PGBIN\s*,\s*(['\"])([^'\"]+)\1")
PY_IMPORT = re.compile(r"^\s*(?:import\s+([\w., ]+)|from\s+([\w.]+)\s+import\b)", re.M)


def py_imports(text, local):
    out = []
    for m in PY_IMPORT.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        names = [m.group(2)] if m.group(2) else [x.split(" as ")[0] for x in m.group(1).split(",")]
        for nm in names:
            top = nm.strip().split(".")[0]
            if top and top not in sys.stdlib_module_names and top not in local:
                out.append((line, top))
    return out


def node_range_admits(rng, ver):
    """does the npm semver range rng (>=, >, <=, <, =, ^, ~, x, ||) admit ver (a 3-tuple)?
    None when rng has a form this does not read"""
    def parse(v):
        parts = [p for p in v.lstrip("v=").split(".") if p not in ("", "x", "X", "*")]
        if not all(p.isdigit() for p in parts) or len(parts) > 3:
            return None
        return tuple(int(p) for p in parts)

    def admits(op, v):
        n = len(v)
        full = v + (0,) * (3 - n)
        if op == ">=":
            return ver >= full
        if op == ">":
            return ver[:n] > v
        if op == "<=":
            return ver[:n] <= v
        if op == "<":
            return ver < full
        if op == "^":   # same first nonzero part
            k = next((i for i, x in enumerate(v) if x), n - 1) + 1 if v else 0
            return ver >= full and ver[:k] == v[:k]
        if op == "~":
            k = 2 if n >= 2 else n
            return ver >= full and ver[:k] == v[:k]
        return ver[:n] == v   # "18", "18.x", "=18.20.4"

    for alt in rng.split("||"):
        ok = True
        for c in alt.split():
            m = re.fullmatch(r"(>=|<=|>|<|\^|~|=)?\s*(\S+)", c)
            v = parse(m.group(2)) if m else None
            if v is None:
                return None if c.strip() not in ("*", "x", "") else True
            ok = ok and admits(m.group(1) or "=", v)
        if ok:
            return True
    return False


def main():
    verify = "--verify-allowlist" in sys.argv[1:]
    listing = "--list" in sys.argv[1:]
    cmds, pymods, luamods, pcmods = deps_entries()
    problems = list(BAD_ENTRIES)

    def rel(p):
        return os.path.relpath(p, ROOT)

    def need(path, line, what, kind="command"):
        if listing:
            print(f"{rel(path)}:{line}: {kind} {what}")
        if kind == "command":
            if what in cmds or what in BUILTINS or what in ALLOWED or what in IGNORE:
                return
            if what.startswith("/") and (what in cmds or os.path.basename(what) in ALLOWED):
                return
            problems.append(f"{rel(path)}:{line}: {what}: not in tools/deps.sh's CMDS "
                            f"(add 'command:package' to the array of its purpose), nor in "
                            f"{rel(__file__)} ALLOW")
        elif kind == "py":
            if what not in pymods:
                problems.append(f"{rel(path)}:{line}: python module {what}: no 'py:{what}:package' "
                                f"in tools/deps.sh's CMDS")
        elif kind == "pc":
            if what not in pcmods:
                problems.append(f"{rel(path)}:{line}: pkg-config module {what}: no 'pc:{what}:package' "
                                f"in tools/deps.sh's CMDS")
        elif kind == "lua":
            if what not in luamods:
                problems.append(f"{rel(path)}:{line}: lua module {what}: no 'lua:{what}:package' "
                                f"in tools/deps.sh's CMDS")

    # ---- shell
    def ours(pattern):
        """the repo's own files matching pattern: never what a test run
        installed or built in the tree (tests/browser/node_modules after
        npm ci, build*/), which the CI's deploy suite finds there"""
        return sorted(p for p in glob.glob(pattern, root_dir=ROOT, recursive=True)
                      if "node_modules" not in p.split(os.sep) and not p.startswith("build"))

    shells = ["test.sh", "run.sh", ".ci/run", "deploy/nginx/render.sh", "loadtest/build.sh"]
    shells += ours("tools/*.sh")
    shells += ours("tests/**/*.sh")
    shells += ours("loadtest/scenarios/*.sh")
    local_py = {os.path.splitext(os.path.basename(p))[0] for p in ours("**/*.py")}
    parsed, funcs = [], set()
    for s in shells:
        p = os.path.join(ROOT, s)
        if not os.path.exists(p):
            continue
        lists, heredocs = lex_shell(open(p).read())
        found = []
        for toks in lists:
            f, fs = shell_commands(toks, CMD_WRAPPERS.get(s, {}))
            found += f
            funcs |= fs
        parsed.append((p, found, heredocs))
    for p, found, heredocs in parsed:
        for line, w, dyn in found:
            if dyn:
                # "$PGBIN/initdb": the one variable we can resolve
                if w.startswith("$/") and "PGBIN" in open(p).read().splitlines()[line - 1]:
                    need(p, line, PGBIN + w[1:])
                continue      # "$PY", "$bin", "$@": not a literal program
            if w in funcs:
                continue
            if "/" in w and not w.startswith("/"):
                continue      # a file of the repo (tools/deps.sh, ./build/chatd)
            need(p, line, w)
            for rx, callee, _why in HIDDEN.get(w, ()):
                if re.search(rx, open(p).read().splitlines()[line - 1]):
                    need(p, line, callee)
        for line, body, _ in heredocs:
            if re.search(r"^(import|from) \w", body, re.M):
                for ln, mod in py_imports(body, local_py):
                    need(p, line + ln, mod, "py")

    # ---- python
    pys = ours("tests/**/*.py")
    pys += ours("tools/*.py")
    pys += ours("loadtest/**/*.py")
    for s in pys:
        p = os.path.join(ROOT, s)
        if os.path.samefile(p, __file__):
            continue          # this file: its docstring names examples
        text = open(p).read()
        for rx in (PY_CALL, PY_WHICH):
            for m in rx.finditer(text):
                need(p, text.count("\n", 0, m.start()) + 1, m.group(2))
        for m in PY_PGBIN.finditer(text):
            need(p, text.count("\n", 0, m.start()) + 1, f"{PGBIN}/{m.group(2)}")
        for line, mod in py_imports(text, local_py):
            need(p, line, mod, "py")

    # ---- javascript (browser tests)
    pkg = open(os.path.join(ROOT, "tests", "browser", "package.json")).read()
    for s in ours("tests/browser/*.mjs") + ours("tests/browser/*.js"):
        p = os.path.join(ROOT, s)
        text = open(p).read()
        for rx in (r"\bspawn(?:Sync)?\(\s*(['\"])([^'\"]+)\1", r"\bstartProc\([^,]+,\s*(['\"])([^'\"]+)\1",
                   r"executablePath:\s*(['\"])([^'\"]+)\1"):
            for m in re.finditer(rx, text):
                need(p, text.count("\n", 0, m.start()) + 1, m.group(2))
        for m in re.finditer(r"^import .* from\s+['\"]([^'\"]+)['\"]", text, re.M):
            mod = m.group(1)
            if mod.startswith(("node:", ".", "/")):
                continue
            if f'"{mod}"' not in pkg:
                problems.append(f"{rel(p)}:{text.count(chr(10), 0, m.start()) + 1}: npm module {mod} "
                                f"is not in tests/browser/package.json (tests/browser/run.sh installs from it)")
        need(p, 1, "node")
        need(p, 1, "npm")
    lock = json.load(open(os.path.join(ROOT, "tests", "browser", "package-lock.json")))
    for where, meta in lock.get("packages", {}).items():
        rng = (meta.get("engines") or {}).get("node") if isinstance(meta.get("engines"), dict) else None
        if not rng or not where:
            continue
        ok = node_range_admits(rng, DEBIAN_NODE)
        if not ok:
            problems.append(f"tests/browser/package-lock.json: {where.split('node_modules/')[-1]} "
                            f"{meta.get('version')} needs node {rng}"
                            f"{'' if ok is False else ' (a range check_deps cannot read)'}; Debian 12's "
                            f"nodejs is {'.'.join(map(str, DEBIAN_NODE))}: pin a version that runs on it")

    # ---- lua (spec/): modules that are not files of the repo
    lua_local = {os.path.splitext(os.path.basename(p))[0] for p in glob.glob("**/*.lua", root_dir=ROOT, recursive=True)}
    lua_local |= {"chathost", "spec", "busted", "luassert", "say"}   # built by us / part of busted
    for s in sorted(glob.glob("spec/**/*.lua", root_dir=ROOT, recursive=True)):
        p = os.path.join(ROOT, s)
        for ln, l in enumerate(open(p), 1):
            m = re.match(r"""^\s*(?:local\s+\w+\s*=\s*)?require\s*\(?\s*["']([\w.]+)["']""", l)
            if m and m.group(1).split(".")[0] not in lua_local:
                need(p, ln, m.group(1), "lua")

    # ---- cmake
    cm = ["CMakeLists.txt"] + sorted(glob.glob("cmake/**/*.cmake", root_dir=ROOT, recursive=True))
    for s in cm:
        p = os.path.join(ROOT, s)
        text = open(p).read()
        progs = {m.group(1): m.group(2) for m in re.finditer(r"find_program\(\s*(\w+)\s+(\S+?)\s*\)", text)}
        for m in re.finditer(r"find_program\(\s*\w+\s+(\S+?)\s*\)", text):
            need(p, text.count("\n", 0, m.start()) + 1, m.group(1))
        for m in re.finditer(r"pkg_check_modules\(\s*\w+((?:\s+[\w.+-]+)+)\s*\)", text):
            for mod in m.group(1).split():
                if mod not in ("REQUIRED", "QUIET", "IMPORTED_TARGET", "GLOBAL", "NO_CMAKE_PATH"):
                    need(p, text.count("\n", 0, m.start()) + 1, mod, "pc")
        for m in re.finditer(r"add_test\([^)]*?COMMAND\s+(\S+)", text):
            w = m.group(1)
            v = re.match(r"^\$\{(\w+)\}$", w)
            if v:
                if v.group(1) in progs:
                    need(p, text.count("\n", 0, m.start()) + 1, progs[v.group(1)])
                continue      # ${t}: a target we build
            need(p, text.count("\n", 0, m.start()) + 1, w)
        # cpack -G DEB with shlibdeps runs file (to find the ELF files) and dpkg-shlibdeps
        for m in re.finditer(r"set\(\s*CPACK_DEBIAN_PACKAGE_SHLIBDEPS\s+ON\s*\)", text):
            need(p, text.count("\n", 0, m.start()) + 1, "file")
            need(p, text.count("\n", 0, m.start()) + 1, "dpkg-shlibdeps")

    if verify:
        problems += verify_allowlist()
    for x in problems:
        print(x)
    scanned = len(shells) + len(pys)
    if problems:
        print(f"check_deps: {len(problems)} problem(s) in {scanned} scripts")
        return 1
    print(f"check_deps: every program and module the scripts call is in tools/deps.sh or ALLOW "
          f"({len(cmds)} commands, {len(pymods)} python and {len(luamods)} lua modules in CMDS; "
          f"{scanned} shell/python scripts read)")
    return 0


def verify_allowlist():
    """each ALLOW command comes from its package; each package is Essential/required"""
    out = []
    paths = {}
    for c, pkg in ALLOWED.items():
        if c in BUILTINS and c not in ("[", "test", "echo", "printf", "kill", "true", "false"):
            continue
        for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
            if os.path.exists(os.path.join(d, c)):
                paths[c] = os.path.realpath(os.path.join(d, c))
                break
        else:
            out.append(f"ALLOW {c} ({pkg}): not on this machine")
    # usrmerge: dpkg may know a file as /bin/x while it is found as /usr/bin/x
    both = set(paths.values()) | {re.sub(r"^/usr/(s?bin)/", r"/\1/", x) for x in paths.values()}
    r = subprocess.run(["dpkg", "-S"] + sorted(both), capture_output=True, text=True)
    owner = {}
    for ln in r.stdout.splitlines():
        pk, _, f = ln.partition(": ")
        for ff in f.split(", "):
            owner[ff.strip()] = pk.split(":")[0]
    for c, pth in paths.items():
        got = owner.get(pth) or owner.get(pth.replace("/usr/bin/", "/bin/")) or owner.get(pth.replace("/usr/sbin/", "/sbin/"))
        if got != ALLOWED[c] and not (c == "awk" and got == "mawk"):
            out.append(f"ALLOW {c}: listed as {ALLOWED[c]}, dpkg -S says {got} ({pth})")
    r = subprocess.run(["apt-cache", "show", "--no-all-versions"] + sorted(ALLOW), capture_output=True, text=True)
    for block in r.stdout.split("\n\n"):
        m = re.search(r"^Package: (\S+)", block, re.M)
        if not m:
            continue
        ess = re.search(r"^Essential: yes", block, re.M)
        pri = re.search(r"^Priority: (\S+)", block, re.M)
        if not ess and (not pri or pri.group(1) != "required"):
            out.append(f"ALLOW package {m.group(1)}: not Essential, Priority {pri.group(1) if pri else '?'}")
    return out


if __name__ == "__main__":
    sys.exit(main())
