"""Runs the adversarial harness's CLI calls (``tests/cli/test_adversarial.py``): one process
imports torch and byol once, then forks a child per call. The child points stderr at a file,
applies the call's fault (if any), runs ``byol.cli.main(argv)`` and exits with its return code;
an uncaught exception prints its traceback and exits 1, as the interpreter would. A fault that
kills the child (SIGKILL) shows as a negative exit code.

Usage: python adversarial_driver.py CASES.json OUT_DIR. CASES.json maps a case name to a list of
steps; a step is ``{"argv": [...], "fault": {...} or null}`` or an action between runs:
``{"truncate": PATH, "size": N}``, ``{"remount": DIR, "size": "64M"}``. OUT_DIR receives
``NAME.K.err`` per run and ``codes.json`` (name -> list of exit codes).

Faults (all in the child only):
  {"type": "signal", "sig": "SIGTERM", "at": K}   the process signals itself after step K
  {"type": "kill_in_save", "save": N}             SIGKILL half-way through writing save N
  {"type": "kill_in_link", "save": N}             SIGKILL after save N's file, before last.pt
  {"type": "raise_in_save", "save": N, "error": "runtime" | "enospc"}
                                                  save N's writer writes half, then raises
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import traceback


def _apply(fault: dict | None) -> None:
    if not fault:
        return
    import torch

    from byol import engine, runfolder

    kind = fault["type"]
    if kind == "signal":
        sig, at = getattr(signal, fault["sig"]), int(fault["at"])
        step = engine.Trainer.train_step

        def train_step(self, *a, **kw):
            out = step(self, *a, **kw)
            if self.state.step + 1 == at:  # (state.step counts the step after this returns)
                os.kill(os.getpid(), sig)
            return out

        engine.Trainer.train_step = train_step
        return
    if kind == "kill_in_link":
        link, n, calls = runfolder._link_or_copy, int(fault["save"]), [0]

        def link_or_copy(path, last):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return link(path, last)

        runfolder._link_or_copy = link_or_copy
        return
    save, n, calls = torch.save, int(fault["save"]), [0]

    def faulty_save(obj, f, *a, **kw):
        calls[0] += 1
        if calls[0] != n:
            return save(obj, f, *a, **kw)
        buf = io.BytesIO()
        save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        if kind == "kill_in_save":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault.get("error") == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        # what torch's zip writer raises when the disk fills up
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos "
                           f"{len(buf.getvalue()) // 2} vs {len(buf.getvalue())}")

    torch.save = faulty_save


def _run(argv: list[str], fault: dict | None, err_path: str) -> int:
    from byol import cli

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(err, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            _apply(fault)
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def main() -> None:
    cases, out_dir = json.load(open(sys.argv[1])), sys.argv[2]
    import torch  # noqa: F401  imported once; every child inherits it

    from byol import cli, engine  # noqa: F401
    from byol.data import sources  # noqa: F401
    from byol.eval import suite  # noqa: F401
    from byol.weights import export  # noqa: F401

    codes: dict[str, list[int]] = {}
    for name, steps in cases.items():
        codes[name] = []
        for step in steps:
            if "truncate" in step:
                with open(step["truncate"], "r+b") as f:
                    f.truncate(step["size"])
            elif "remount" in step:
                subprocess.run(["mount", "-o", f"remount,size={step['size']}", step["remount"]],
                               check=True)
            else:
                k = len(codes[name])
                codes[name].append(_run(step["argv"], step.get("fault"),
                                        os.path.join(out_dir, f"{name}.{k}.err")))
    with open(os.path.join(out_dir, "codes.json"), "w") as f:
        json.dump(codes, f)


if __name__ == "__main__":
    main()
