"""A real waitress server around an app in this process, for tests that need
real connections and real threads."""

import contextlib
import threading

import waitress


@contextlib.contextmanager
def serving(app, threads=8):
    """Serve `app` on a free 127.0.0.1 port while the block runs; yields the port."""
    server = waitress.create_server(app, host='127.0.0.1', port=0, threads=threads)
    stop = threading.Event()

    def run():
        # The loop and the close in one thread: closing sockets under a running
        # select() from another thread makes it fail with EBADF.
        while not stop.is_set():
            server.asyncore.loop(timeout=0.05, map=server._map, count=1)
        server.task_dispatcher.shutdown()
        server.asyncore.close_all(server._map)

    loop = threading.Thread(target=run, daemon=True)
    loop.start()
    try:
        yield server.effective_port
    finally:
        stop.set()
        loop.join(10)
    assert not loop.is_alive()
