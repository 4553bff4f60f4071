"""Runs a command and prints its wall time and peak RSS as one JSON line.

  python measure.py LABEL -- COMMAND [ARGS...]

Peak RSS is the child's ru_maxrss; add --pids P1,P2 to also sum the peak
(VmHWM) of long-running processes such as a scheduler and its executors,
read just after the command ends. The command's own output goes to stderr.
"""

import json
import resource
import subprocess
import sys
import time


def vm_hwm_mb(pid: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    args = sys.argv[1:]
    label = args.pop(0)
    pids = []
    if args and args[0] == "--pids":
        pids = [p for p in args[1].split(",") if p]
        args = args[2:]
    if args and args[0] == "--":
        args = args[1:]
    start = time.perf_counter()
    done = subprocess.run(args, stdout=sys.stderr)
    seconds = time.perf_counter() - start
    client = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    servers = {p: round(vm_hwm_mb(p)) for p in pids}
    print(
        json.dumps(
            {
                "run": label,
                "seconds": round(seconds, 3),
                "exit": done.returncode,
                "client_peak_rss_mb": round(client),
                "server_peak_rss_mb": servers,
                "total_peak_rss_mb": round(client + sum(servers.values())),
            }
        )
    )
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
