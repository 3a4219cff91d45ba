"""Load a page in headless Chromium over the DevTools protocol (pipe transport: no extra package)
and return what a JavaScript expression evaluates to, plus every console error, uncaught exception
and failed resource load (a missing image arrives as a `Log.entryAdded` error)."""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class _Pipe:
    """--remote-debugging-pipe: Chromium reads commands on fd 3, writes replies on fd 4, NUL-separated."""

    def __init__(self, write_fd: int, read_fd: int):
        self.write_fd, self.read_fd = write_fd, read_fd
        self.buf, self.events, self.next_id = b"", [], 0

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.write_fd, json.dumps(msg).encode() + b"\0")
        return self.next_id

    def wait(self, match, deadline: float) -> dict:
        while time.time() < deadline:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" not in msg:
                    self.events.append(msg)
                if match(msg):
                    return msg
            ready, _, _ = select.select([self.read_fd], [], [], 0.5)
            if ready:
                chunk = os.read(self.read_fd, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self.buf += chunk
        raise TimeoutError("chromium did not answer in time")

    def call(self, method: str, deadline: float, params: dict | None = None, session: str | None = None) -> dict:
        i = self.send(method, params, session)
        return self.wait(lambda m: m.get("id") == i, deadline).get("result", {})


def _errors(events: list[dict]) -> list[str]:
    out = []
    for ev in events:
        p = ev.get("params", {})
        if ev.get("method") == "Runtime.exceptionThrown":
            out.append(str(p["exceptionDetails"].get("text")))
        elif ev.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(str(p.get("args")))
        elif ev.get("method") == "Log.entryAdded" and p["entry"].get("level") == "error":
            out.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}")
    return out


def load_page(url: str, expression: str, timeout: float = 60) -> tuple[object, list[str]]:
    """-> (value of `expression` after the load event, console/resource errors)."""
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()

    def wire_fds():  # runs in the child before exec; pass_fds keeps 3 and 4 open
        # Move both ends above 9 first: either may itself be fd 3 or 4.
        read_end, write_end = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
        os.dup2(read_end, 3)
        os.dup2(write_end, 4)

    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                 "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
                                preexec_fn=wire_fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        os.close(to_r)
        os.close(from_w)
        pipe = _Pipe(to_w, from_r)
        deadline = time.time() + timeout
        try:
            target = pipe.call("Target.createTarget", deadline, {"url": "about:blank"})["targetId"]
            sid = pipe.call("Target.attachToTarget", deadline, {"targetId": target, "flatten": True})["sessionId"]
            for method in ("Runtime.enable", "Log.enable", "Page.enable"):
                pipe.call(method, deadline, session=sid)
            pipe.send("Page.navigate", {"url": url}, sid)
            pipe.wait(lambda m: m.get("method") == "Page.loadEventFired", deadline)
            result = pipe.call("Runtime.evaluate", deadline, {"expression": expression, "returnByValue": True}, sid)
            pipe.send("Browser.close")
        finally:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.close(to_w)
            os.close(from_r)
    return result["result"].get("value"), _errors(pipe.events)
