#!/usr/bin/env bash
# The installed shape, as a user gets it: build the wheel, install it with no extras into a fresh
# virtualenv, and from a directory outside the checkout run the CLI, the demo and the gateway.
# A runtime dependency that only a test extra happens to pull in fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$PWD
PY=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "wheel smoke: building the wheel"
.venv/bin/pip wheel -q --no-deps -w "$work/dist" "$checkout" 2>&1 | grep -v '^WARNING: Location' || true
wheel=$(ls "$work"/dist/celery_tracking-*.whl)
"$PY" -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$wheel" 2>&1 | grep -v '^WARNING: Location' || true

cd "$work"   # outside the checkout: nothing can be imported from it
export PATH="$work/venv/bin:$PATH"
unset PYTHONPATH TRACKER_DATABASE_URL TRACKER_REDIS_URL
where=$(python -c 'import tracker, os; print(os.path.dirname(tracker.__file__))')
case "$where" in "$checkout"*) echo "wheel smoke: tracker imported from the checkout ($where)"; exit 1;; esac

echo "wheel smoke: tracker --help"
tracker --help >/dev/null

echo "wheel smoke: tracker demo --once --scale 0.2"
tracker demo --once --scale 0.2 --port 0 > "$work/demo.out" 2>&1 || { tail -40 "$work/demo.out"; exit 1; }
grep -q "#token=" "$work/demo.out" || { echo "wheel smoke: the demo printed no sign-in link"; exit 1; }

echo "wheel smoke: tracker gateway answers /healthz"
python - <<'PY'
import os, secrets, subprocess, sys, time, urllib.request
from tracker.demo.services import PostgresServer, RedisServer, free_port

pg, rs = PostgresServer().start(), RedisServer().start()
env = dict(os.environ, TRACKER_DATABASE_URL=pg.url, TRACKER_REDIS_URL=rs.url, TRACKER_SECRET=secrets.token_hex(32))
port = free_port()
try:
    subprocess.run(["tracker", "migrate"], env=env, check=True, capture_output=True)
    gw = subprocess.Popen(["tracker", "gateway", "--host", "127.0.0.1", "--port", str(port)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline, body = time.monotonic() + 60, None
    while time.monotonic() < deadline and body is None:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
        except OSError:
            if gw.poll() is not None:
                sys.exit(f"the gateway exited with {gw.returncode}")
            time.sleep(0.2)
    gw.terminate()
    code = gw.wait(30)
    if body is None or b'"ok"' not in body:
        sys.exit(f"no healthy /healthz: {body!r}")
    if code != 0:
        sys.exit(f"the gateway did not shut down cleanly: {code}")
finally:
    pg.cleanup()
    rs.cleanup()
PY
echo "wheel smoke: a user's test through the installed pytest plugin"
"$work/venv/bin/pip" install -q pytest 2>&1 | grep -v '^WARNING: Location' || true
mkdir "$work/userproj"
cp "$checkout/tests/e2e/test_user_plugin.py" "$work/userproj/"
(cd "$work/userproj" && python -m pytest -q -p no:cacheprovider test_user_plugin.py)

echo "wheel smoke: passed"
