"""Soak: many mixed ``p3`` invocations under random faults; nothing may be lost, left or hung.

Runs ``--runs`` invocations of ``p3 data synth``, ``p3 data prepare``, ``p3 select`` and
``p3 grade`` (a few at a time, so that two runs often write the same output), each with a
random fault: none, SIGKILL or SIGTERM after a random delay, an output on a full tmpfs
(when running as root), an ``s3://`` output on moto's S3 server (a separate process on
loopback) that is stopped with SIGSTOP for a few seconds while runs use it, and outputs
that clash with an input. Afterwards it checks:

- lost: an input changed; an output present that is unreadable, fails its contract, or
  disagrees with its sibling (a selection and its report); a clashing run that did not
  exit 2; a successful run whose outputs are missing although no later run touched them;
- leftovers: temp files, staging folders, lock files, lock objects, unfinished multipart
  uploads and processes still running on the soak's files after one last clean run per output (the next run is
  what removes a killed run's files; the count before that pass is printed too);
- hangs: runs that had not ended ``--hang-after`` seconds after they started.

Prints ``soak runs=N lost=0 leftovers=0 hangs=0`` last.

    python bench/soak.py [--runs 200] [--parallel 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
sys.path.insert(0, SRC)

import pyarrow.parquet as pq  # noqa: E402

from p3 import contracts, storage  # noqa: E402
from p3.minimath import synth_problems  # noqa: E402
from p3.problems import load_problems  # noqa: E402
from p3.selection import SelectConfig, select_ids  # noqa: E402
from p3.verify.grade import RESULTS  # noqa: E402

BUCKET = "p3-soak"
TEMP_MARKS = (".tmp", ".p3-lock")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Store:
    """moto's S3 server as its own process, stoppable like a real server."""

    def __init__(self) -> None:
        import boto3

        self.endpoint = f"http://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                      self.endpoint.rsplit(":", 1)[1]], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                   aws_access_key_id="soak", aws_secret_access_key="soak")
        deadline = time.time() + 120
        while True:
            try:
                self.client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        self.lock = threading.Lock()

    def stall(self, seconds: float) -> None:
        with self.lock:
            self.proc.send_signal(signal.SIGSTOP)
            time.sleep(seconds)
            self.proc.send_signal(signal.SIGCONT)

    def keys(self) -> list[str]:
        return [o["Key"] for o in self.client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]

    def uploads(self) -> list[str]:
        return [u["Key"] for u in self.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.rng = random.Random(args.seed)
        self.inputs = work / "inputs"
        self.inputs.mkdir()
        self.tmpdir = work / "systmp"  # the runs' system temp folder: staging files show here
        self.tmpdir.mkdir()
        self.dirs = [work / "a", work / "b"]
        for d in self.dirs:
            d.mkdir()
        self.full = self._small_tmpfs(work / "full")
        self.store = Store()
        self.env = {**os.environ, "PYTHONPATH": SRC, "P3_PROGRESS": "0", "TMPDIR": str(self.tmpdir),
                    "AWS_ACCESS_KEY_ID": "soak", "AWS_SECRET_ACCESS_KEY": "soak", "AWS_DEFAULT_REGION": "us-east-1",
                    "P3_S3_ENDPOINT_URL": self.store.endpoint, "NO_PROXY": "127.0.0.1,localhost",
                    "P3_S3_CONNECT_TIMEOUT": "1", "P3_S3_READ_TIMEOUT": "2", "P3_S3_ATTEMPTS": "2",
                    "P3_S3_LEASE_SECONDS": "3"}
        # the checks in this process read the same store
        os.environ.update({k: v for k, v in self.env.items() if k.startswith(("AWS_", "P3_S3", "NO_PROXY"))})
        self.log: list[dict] = []
        self.lock = threading.Lock()
        self._make_inputs()

    def _small_tmpfs(self, path: Path) -> Path | None:
        path.mkdir()
        if os.geteuid() != 0:
            return None
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(path)], capture_output=True)
        return path if ok.returncode == 0 else None

    def _make_inputs(self) -> None:
        table = synth_problems(60, "1-3", seed=3)
        pq.write_table(table, self.inputs / "problems.parquet")
        ids = table.column("id").to_pylist()
        diff = {"id": ids, "epoch": [0] * len(ids), "difficulty": [(i * 7 % 60) / 60 for i in range(len(ids))],
                "likelihood": [None] * len(ids), "pass_rate": [None] * len(ids), "n_rollouts": [0] * len(ids)}
        import pyarrow as pa

        pq.write_table(pa.table(diff, schema=contracts.DIFFICULTY), self.inputs / "difficulty.parquet")
        answers = table.column("answer").to_pylist()
        with open(self.inputs / "completions.jsonl", "w") as fh:
            for i, (pid, ans) in enumerate(zip(ids, answers)):
                fh.write(json.dumps({"id": pid, "sample": 0, "completion": f"\\boxed{{{ans if i % 2 else 0}}}"}) + "\n")
        with open(self.inputs / "source.jsonl", "w") as fh:
            for row in table.to_pylist():
                fh.write(json.dumps({"problem": row["prompt"], "solution": row["solution"],
                                     "level": "Level 1", "type": "Algebra"}) + "\n")
        self.hashes = {p: digest(p) for p in self.inputs.iterdir()}

    # -- one invocation ---------------------------------------------------------------
    def place(self, fault: str) -> str:
        if fault == "full" and self.full is not None:
            return str(self.full)
        if fault in ("s3", "stall"):
            return f"s3://{BUCKET}/o"
        return str(self.rng.choice(self.dirs))

    def command(self, i: int, fault: str) -> tuple[str, list[str], dict]:
        where = self.place(fault)
        k = self.rng.randrange(3)  # few names per place: concurrent runs meet on one output
        # grade starts a math-verify process pool: the dearest verb, so the rarest
        verb = self.rng.choices(["synth", "prepare", "select", "grade"], weights=[3, 3, 4, 1])[0]
        problems = str(self.inputs / "problems.parquet")
        outs: dict[str, str] = {}
        if verb == "synth":
            outs["out"] = f"{where}/syn_{k}.parquet"
            argv = ["data", "synth", "--n", str(self.rng.randint(20, 3000)), "--seed", str(i), "--out", outs["out"]]
        elif verb == "prepare":
            outs["out"] = f"{where}/prep_{k}.parquet"
            argv = ["data", "prepare", "--task", "math", "--source", str(self.inputs / "source.jsonl"),
                    "--limit", str(self.rng.randint(5, 60)), "--seed", str(i), "--out", outs["out"]]
        elif verb == "select":
            outs["out"], outs["report"] = f"{where}/sel_{k}.parquet", f"{where}/sel_{k}.json"
            argv = ["select", "--problems", problems, "--difficulty", str(self.inputs / "difficulty.parquet"),
                    "--strategy", self.rng.choice(["random", "spl"]), "--budget", str(self.rng.randint(3, 40)),
                    "--seed", str(i), "--out", outs["out"], "--report", outs["report"]]
        else:
            outs["out"] = f"{where}/grade_{k}.parquet"
            argv = ["grade", "--problems", problems, "--completions", str(self.inputs / "completions.jsonl"),
                    "--workers", "1", "--out", outs["out"]]
        own_inputs = [a for a in argv if a.startswith(str(self.inputs))]
        if fault == "clash" and own_inputs:  # the output is one of this run's inputs: exit 2
            target = self.rng.choice(own_inputs)
            argv = argv[: argv.index("--out") + 1] + [target] + argv[argv.index("--out") + 2:]
            outs = {}
        elif fault == "clash":  # synth reads nothing: two outputs of one name instead
            return self.command(i, "clash") if verb == "synth" else (verb, argv, outs)
        return verb, argv, outs

    def one(self, i: int) -> None:
        fault = self.rng.choices(["none", "kill", "term", "full", "s3", "stall", "clash"],
                                 weights=[30, 20, 10, 10 if self.full else 0, 15, 10, 5])[0]
        verb, argv, outs = self.command(i, fault)
        start = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "p3.cli", *argv], env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        if fault in ("kill", "term"):
            time.sleep(self.rng.uniform(0.3, 4.0))
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL if fault == "kill" else signal.SIGTERM)
        if fault == "stall":
            time.sleep(self.rng.uniform(0.5, 2.5))
            self.store.stall(self.rng.uniform(2.0, 6.0))
        hung = False
        try:
            rc = proc.wait(timeout=max(1.0, self.args.hang_after - (time.time() - start)))
        except subprocess.TimeoutExpired:
            hung = True
            proc.kill()
            rc = proc.wait()
        err = proc.stderr.read()
        with self.lock:
            self.log.append({"i": i, "pid": proc.pid, "verb": verb, "fault": fault, "rc": rc, "hung": hung, "outs": outs,
                             "start": start, "end": time.time(), "err": err.strip().splitlines()[-1:] if err else [],
                             "traceback": "Traceback" in err})

    # -- checks -----------------------------------------------------------------------
    def present(self, path: str) -> bool:
        return storage.exists(path)

    def check_output(self, kind: str, outs: dict) -> str | None:
        """Why the outputs of one place are not complete and consistent (None when they are)."""
        out = outs["out"]
        try:
            if kind in ("synth", "prepare"):
                load_problems(out)
            elif kind == "grade":
                table = contracts.read(out, RESULTS, unique_id=False)
                if table.num_rows != 60:
                    return f"{out}: {table.num_rows} of 60 results"
            elif kind == "select":
                table = contracts.read(out, contracts.SELECTION)
                if not self.present(outs["report"]):
                    return f"{out}: present without its report"
                report = storage.read_json(outs["report"])
                if report["selected"] != table.num_rows:
                    return f"{out}: {table.num_rows} rows, its report says {report['selected']}"
                expect = self.expected_selection(report)
                if table.column("id").to_pylist() != expect:
                    return f"{out}: the picks differ from those its report's settings give"
        except Exception as exc:  # noqa: BLE001 - anything unreadable is lost
            return f"{out}: {type(exc).__name__}: {exc}"
        return None

    def expected_selection(self, report: dict) -> list[str]:
        problems = load_problems(self.inputs / "problems.parquet")
        ids = problems.column("id").to_pylist()
        diff = pq.read_table(self.inputs / "difficulty.parquet").column("difficulty").to_numpy()
        cfg = SelectConfig(strategy=report["strategy"], budget=report["budget"], seed=report["seed"])
        return select_ids(ids, diff, None, cfg).ids

    def leftovers(self) -> list[str]:
        found = [str(p) for root in [self.tmpdir, *self.dirs, *([self.full] if self.full else [])]
                 for p in Path(root).rglob("*") if p.name.endswith(TEMP_MARKS) or p.name.startswith("p3-")]
        found += [f"process {pid}: {args}" for pid, args in self.processes()]
        found += [f"s3://{BUCKET}/{k}" for k in self.store.keys() if k.endswith(".p3-lock")]
        found += [f"s3://{BUCKET}/{k} (unfinished upload)" for k in self.store.uploads()]
        return found

    def processes(self) -> list[tuple[int, str]]:
        """Processes still running from the soak's runs (each run is its own session, so a
        killed run's workers, e.g. grade's math-verify pool, still carry its session id)."""
        sessions = {r["pid"] for r in self.log}
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                session = int(stat.rsplit(")", 1)[1].split()[3])  # fields after "(comm)": state ppid pgrp session
                if session in sessions:
                    out.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]))
        return out

    def last_writes(self) -> dict[str, tuple[str, dict]]:
        """Each output place and the kind of step that writes it."""
        places: dict[str, tuple[str, dict]] = {}
        for r in self.log:
            if r["outs"]:
                places[r["outs"]["out"]] = (r["verb"], r["outs"])
        return places

    def sweep(self) -> None:
        """The next run of every output: one clean invocation per place (what removes the
        files a killed run left beside it, its lease and its unfinished uploads)."""
        time.sleep(float(self.env["P3_S3_LEASE_SECONDS"]) + 0.5)  # killed runs' leases expire
        with ThreadPoolExecutor(self.args.parallel) as ex:
            list(ex.map(self._sweep_one, self.last_writes().items()))

    def _sweep_one(self, item: tuple[str, tuple[str, dict]]) -> None:
        out, (verb, outs) = item
        inputs = self.inputs
        argv = {"synth": ["data", "synth", "--n", "20", "--out", out],
                "prepare": ["data", "prepare", "--task", "math", "--source", str(inputs / "source.jsonl"),
                            "--limit", "5", "--out", out],
                "select": ["select", "--problems", str(inputs / "problems.parquet"), "--strategy", "random",
                           "--budget", "3", "--out", out, "--report", outs.get("report", out + ".json")],
                "grade": ["grade", "--problems", str(inputs / "problems.parquet"), "--completions",
                          str(inputs / "completions.jsonl"), "--workers", "1", "--out", out]}[verb]
        subprocess.run([sys.executable, "-m", "p3.cli", *argv], env=self.env, capture_output=True, timeout=300)

    def run(self) -> dict:
        start = time.time()
        with ThreadPoolExecutor(self.args.parallel) as ex:
            list(ex.map(self.one, range(self.args.runs)))
        took = time.time() - start
        lost: list[str] = []
        for p, h in self.hashes.items():
            if not p.exists() or digest(p) != h:
                lost.append(f"input {p} changed")
        for r in self.log:
            if r["fault"] == "clash" and r["rc"] != 2:
                lost.append(f"run {r['i']}: a clashing output gave exit {r['rc']}, not 2")
            if r["traceback"]:
                lost.append(f"run {r['i']}: a traceback instead of one line: {r['err']}")
        for out, (verb, outs) in self.last_writes().items():
            if self.present(out):
                why = self.check_output(verb, outs)
                if why:
                    lost.append(why)
            else:
                ok = [r for r in self.log if r["outs"].get("out") == out and r["rc"] == 0]
                if ok and not any(r["start"] > ok[-1]["start"] for r in self.log if r["outs"].get("out") == out):
                    lost.append(f"{out}: written by run {ok[-1]['i']} (exit 0) and gone")
        before = self.leftovers()
        self.sweep()
        after = self.leftovers()
        hangs = sum(r["hung"] for r in self.log)
        return {"runs": len(self.log), "lost": lost, "leftovers_before_sweep": before, "leftovers": after,
                "hangs": hangs, "seconds": took}

    def close(self) -> None:
        self.store.close()
        if self.full is not None:
            subprocess.run(["umount", str(self.full)], check=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--parallel", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hang-after", type=float, default=120.0, help="seconds after which a run counts as hung")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    soak = Soak(args, work)
    try:
        res = soak.run()
    finally:
        soak.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    faults: dict[str, int] = {}
    codes: dict[str, int] = {}
    for r in soak.log:
        faults[r["fault"]] = faults.get(r["fault"], 0) + 1
        codes[str(r["rc"])] = codes.get(str(r["rc"]), 0) + 1
    print(f"faults: {json.dumps(faults, sort_keys=True)}")
    print(f"exit codes: {json.dumps(codes, sort_keys=True)}")
    for verb in sorted({r["verb"] for r in soak.log}):
        took = sorted(r["end"] - r["start"] for r in soak.log if r["verb"] == verb)
        print(f"{verb}: {len(took)} runs, median {took[len(took) // 2]:.1f}s, max {took[-1]:.1f}s")
    print(f"wall {res['seconds']:.0f}s for {res['runs']} runs, {args.parallel} at a time; "
          f"leftovers before the sweep {len(res['leftovers_before_sweep'])} (killed runs' files, removed by the next run)")
    print("load average (1, 5, 15 min) before {:.1f} {:.1f} {:.1f}, after {:.1f} {:.1f} {:.1f} on {} cores".format(
        *load_before, *os.getloadavg(), os.cpu_count()))
    for line in res["lost"][:20] + res["leftovers"][:20]:
        print("  " + line)
    print(f"soak runs={res['runs']} lost={len(res['lost'])} leftovers={len(res['leftovers'])} hangs={res['hangs']}")
    return 0 if not res["lost"] and not res["leftovers"] and not res["hangs"] else 1


if __name__ == "__main__":
    sys.exit(main())
