"""`livestream-api serve` with cProfile on every waitress worker thread.

    BENCH_PROFILE_OUT=out.prof python bench/profiled_server.py serve --db x.db --port 8080

`python -m cProfile` sees only the main thread (waitress's event loop); the app
runs in the worker threads. So this wraps the app the server builds: each worker
thread gets its own cProfile.Profile, enabled only while the app handles a request
(everything from the access log down: routing, auth, SQL, JSON, logging). On
SIGTERM the server drains and returns, and the per-thread profiles are merged
into BENCH_PROFILE_OUT (pstats format).

BENCH_PROFILE_TIMER=wall (default) times include waiting: for the GIL, for
locks, for fsync. BENCH_PROFILE_TIMER=cpu uses each thread's own CPU time, which
shows what a request costs to compute, without the waits.
"""

import cProfile
import os
import pstats
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import livestream_api  # noqa: E402

_local = threading.local()
_profiles = []
_profiles_lock = threading.Lock()
_AccessLog = livestream_api.AccessLog


class ProfiledAccessLog(_AccessLog):
    def __call__(self, environ, start_response):
        profiler = getattr(_local, 'profiler', None)
        if profiler is None:
            cpu = os.environ.get('BENCH_PROFILE_TIMER', 'wall') == 'cpu'
            profiler = _local.profiler = (cProfile.Profile(time.thread_time) if cpu
                                          else cProfile.Profile())
            with _profiles_lock:
                _profiles.append(profiler)
        profiler.enable()
        try:
            return _AccessLog.__call__(self, environ, start_response)
        finally:
            profiler.disable()


def main():
    out = os.environ['BENCH_PROFILE_OUT']
    livestream_api.AccessLog = ProfiledAccessLog
    status = livestream_api.main(sys.argv[1:])
    with _profiles_lock:
        profiles = list(_profiles)
    if profiles:
        pstats.Stats(*profiles).dump_stats(out)
    return status


if __name__ == '__main__':
    sys.exit(main())
