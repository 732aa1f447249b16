"""PID 1 of a local sandbox: builds its filesystem, starts the program under limits, and reports how it ended.

The local backend starts this file as `unshare --net --pid --mount --ipc --uts [--user --map-root-user] --fork
--kill-child python -I -S inside.py STAGING`. It runs with the host's Python, before any sandboxed code, and imports
nothing but the standard library (the sandbox cannot see composer_core). In the new namespaces it:

1. mounts a small tmpfs as the new root and bind-mounts the allow-listed host folders into it read-only (the
   system's /usr and /lib*, the Python installation, the configured extra paths); /etc gets a minimal passwd,
   group and hosts; /dev only null, zero, full, random and urandom; /proc is the sandbox's own;
2. mounts the work dir, `/sandbox`, as a size-limited tmpfs (the only writable place) and copies the files in;
3. pivots into the new root and detaches the host's, so no path leads back to the host's files;
4. forks the program with rlimits (address space, CPU seconds, processes, file size, open files, no core dumps),
   as an unprivileged user (run as root: a uid of its own, 1000000 + this process's host pid, so that
   RLIMIT_NPROC counts only this sandbox's processes; otherwise every capability dropped), with no_new_privs;
5. reaps every process until the program exits, then writes one JSON status line to the status fd and exits:
   as PID 1 of the PID namespace, its exit makes the kernel kill whatever the program left behind. (Its first
   status line, written at the start, is its host pid: the host stops a run by SIGKILLing this process, and
   `unshare` exits only once the kernel has removed every process of the namespace.)

A backstop alarm kills everything `backstop_s` after the start even if the host process that started it is gone.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import shutil
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
ST_RELATIME = 4096  # statvfs reports relatime with its own bit
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 28, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
SECURE_NOROOT_ALL = 0x3F  # NOROOT, NO_SETUID_FIXUP, KEEP_CAPS, each with its lock
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217, "riscv64": 41}
UID_BASE = 1_000_000
DEVICES = ("null", "zero", "full", "random", "urandom")
WORK = "/sandbox"

libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _bytes(text: str | None) -> bytes | None:
    return text.encode() if text is not None else None


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(libc.mount(_bytes(source), _bytes(target), _bytes(fstype), ctypes.c_ulong(flags), _bytes(data)),
           f"mount {source or fstype} on {target}")


def locked_flags(path: str) -> int:
    """The flags a remount must keep (the kernel refuses to clear them inside a user namespace)."""
    flag = os.statvfs(path).f_flag
    kept = flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
    return kept | (MS_RELATIME if flag & ST_RELATIME else 0)


def mount_points_under(root: str) -> list[str]:
    """Every mount point at or below `root`, from this mount namespace's mountinfo (octal escapes decoded)."""
    points = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == root or point.startswith(root + "/"):
                points.append(point)
    return points


def bind_read_only(source: str, target: str) -> None:
    mount(source, target, None, MS_BIND | MS_REC)


def populate_root(root: str, spec: dict) -> None:
    """The allow-listed folders (read-only binds or symlinks as on the host), /etc, /dev, /proc, /tmp, /sandbox."""
    bound: list[str] = []
    for path in spec["readonly_paths"]:
        if not os.path.lexists(path):
            continue
        real = os.path.realpath(path)
        if real != path:
            link = root + path
            if not os.path.lexists(link):
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink(os.readlink(path) if os.path.dirname(path) == "/" else real, link)
        if any(real == done or real.startswith(done + "/") for done in bound) or not os.path.exists(real):
            continue
        target = root + real
        if os.path.isdir(real):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "w").close()
        bind_read_only(real, target)
        bound.append(real)
    uid = spec["uid"]
    os.makedirs(root + "/etc", exist_ok=True)
    for name, text in (("passwd", f"root:x:0:0::/:/bin/sh\nsandbox:x:{uid}:{uid}::{WORK}:/bin/sh\n"),
                       ("group", f"root:x:0:\nsandbox:x:{uid}:\n"), ("hosts", "127.0.0.1 localhost\n")):
        with open(f"{root}/etc/{name}", "w") as handle:
            handle.write(text)
    os.makedirs(root + "/dev")
    mount("tmpfs", root + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=755")
    for device in DEVICES:
        open(f"{root}/dev/{device}", "w").close()
        mount(f"/dev/{device}", f"{root}/dev/{device}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    os.makedirs(root + "/proc")
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + "/tmp", exist_ok=True)
    os.makedirs(root + WORK)
    mount("tmpfs", root + WORK, "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={spec['work_dir_mb']}m,nr_inodes=16384,mode=700,uid={uid},gid={uid}")
    copy_files(spec["staging"] + "/files", root + WORK, uid)


def copy_files(source: str, target: str, uid: int) -> None:
    """The request's files into the work dir, owned by the sandbox user."""
    for folder, directories, files in os.walk(source):
        relative = os.path.relpath(folder, source)
        destination = os.path.normpath(os.path.join(target, relative))
        for name in directories:
            os.mkdir(os.path.join(destination, name), 0o700)
            os.chown(os.path.join(destination, name), uid, uid)
        for name in files:
            shutil.copyfile(os.path.join(folder, name), os.path.join(destination, name))
            os.chown(os.path.join(destination, name), uid, uid)


def make_read_only(root: str, writable: tuple[str, ...]) -> None:
    """Remount the new root and every bind inside it read-only, except the `writable` mount points."""
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | locked_flags(root))
    for point in mount_points_under(root):
        if point == root or point in writable:
            continue
        mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | locked_flags(point))


def pivot_into(root: str) -> None:
    """Make `root` the root of this mount namespace and detach the host's, so that nothing can reach it."""
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(0, f"pivot_root: unknown syscall number on {platform.machine()}")
    os.chdir(root)
    _check(libc.syscall(number, b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "detach the host's root")
    os.chdir("/")


def drop_privileges(spec: dict) -> None:
    """In the program's process: no way back to privileges, as its own uid (root) or without capabilities."""
    if not spec["user_namespace"]:
        uid = spec["uid"]
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    else:
        libc.prctl(PR_SET_SECUREBITS, SECURE_NOROOT_ALL, 0, 0, 0)
        libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        for capability in range(64):
            libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def set_limits(limits: dict) -> None:
    memory = limits["memory_mb"] * 1024 * 1024
    for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, limits["cpu_s"]),
                         (resource.RLIMIT_NPROC, limits["max_processes"]),
                         (resource.RLIMIT_FSIZE, limits["max_file_bytes"]),
                         (resource.RLIMIT_NOFILE, limits["max_open_files"]), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))


def start_program(spec: dict) -> int:
    pid = os.fork()
    if pid:
        return pid
    try:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        os.chdir(WORK)
        drop_privileges(spec)
        set_limits(spec["limits"])
        os.execvpe(spec["command"][0], spec["command"], spec["env"])
    except BaseException as error:  # the program could not start: say why on its stderr, exit as a shell would
        os.write(2, f"sandbox: cannot start {spec['command'][0]!r}: {error}\n".encode(errors="replace"))
        os._exit(127 if isinstance(error, FileNotFoundError) else 126)
    return 0  # unreachable: the child execs or exits


def wait_for(program: int) -> dict:
    """Reap every process (as init must) until the program exits; its status and the CPU time of all reaped."""
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return {"exit_code": None, "signal": None}
        except InterruptedError:
            continue
        if pid == program:
            if os.WIFSIGNALED(status):
                return {"exit_code": -os.WTERMSIG(status), "signal": os.WTERMSIG(status)}
            return {"exit_code": os.WEXITSTATUS(status), "signal": None}


def backstop(_signum: int, _frame: object) -> None:
    os.kill(-1, signal.SIGKILL)
    report({"exit_code": None, "signal": None, "backstop": True})
    os._exit(0)


def report(status: dict) -> None:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    status["cpu_s"] = usage.ru_utime + usage.ru_stime
    os.write(STATUS_FD, (json.dumps(status) + "\n").encode())


def main(staging: str) -> None:
    global STATUS_FD
    with open(staging + "/spec.json") as handle:
        spec = json.load(handle)
    STATUS_FD = spec["status_fd"]
    os.set_inheritable(STATUS_FD, False)  # the program must not hold it: its end tells the host we are gone
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # the program (same uid in a user namespace) may not ptrace PID 1
    signal.signal(signal.SIGALRM, backstop)
    signal.alarm(spec["backstop_s"])
    host_pid = int(os.readlink("/proc/self"))  # the host's /proc is still mounted: this is our pid out there
    os.write(STATUS_FD, (json.dumps({"pid": host_pid}) + "\n").encode())  # the host kills us, not unshare
    try:
        if spec["uid"] is None:
            spec["uid"] = 0 if spec["user_namespace"] else UID_BASE + host_pid
        spec["staging"] = staging
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        root = staging + "/root"
        mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
        populate_root(root, spec)
        make_read_only(root, writable=(root + WORK, root + "/proc"))
        pivot_into(root)
    except OSError as error:
        os.write(STATUS_FD, (json.dumps({"setup_error": str(error)}) + "\n").encode())
        sys.exit(1)
    program = start_program(spec)
    null = os.open("/dev/null", os.O_RDWR)
    for descriptor in (0, 1, 2):  # only the program holds the host's pipes: its exit closes them
        os.dup2(null, descriptor)
    report(wait_for(program))


STATUS_FD = -1  # set from the spec: where the one status line goes

if __name__ == "__main__":
    main(sys.argv[1])
