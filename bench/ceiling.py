"""The ceiling for bench/run.py: a bare Bottle app on waitress answering every
request with a constant JSON envelope. Nothing the stack does can be faster.

    python bench/ceiling.py --port 8099 --threads 8
"""

import argparse
import json
import logging

import bottle
import waitress

BODY = json.dumps({'ec': 0, 'data': {'status': 'ok'}}, separators=(',', ':'))


def make_app():
    app = bottle.Bottle()

    @app.route('/<path:path>', method=['GET', 'POST', 'PUT', 'PATCH', 'DELETE'])
    def constant(path):
        bottle.response.content_type = 'application/json'
        return BODY

    return app


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--threads', type=int, default=8)
    args = parser.parse_args()
    # As the real server does: under load waitress warns of its queue depth per request.
    logging.getLogger('waitress.queue').setLevel(logging.ERROR)
    waitress.serve(make_app(), host=args.host, port=args.port, threads=args.threads,
                   ident='ceiling', _quiet=True)


if __name__ == '__main__':
    main()
