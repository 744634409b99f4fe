"""Time the parse of an nginx-rtmp `rtmp_stat all` page of many streams.

    python bench/stat_parse.py [--streams 2000] [--runs 20]

Builds a /stat XML of --streams streams (each a publisher, a viewer and the
video/audio meta, as tests/data/rtmp_stat.xml captured from nginx-rtmp 1.1.4)
and parses it --runs times, from memory, with parse_rtmp_stat (what a node's
poller runs on its stats URL's answer). Prints the size, the median and worst
parse time, the time per 1,000 streams, and the peak memory traced during one parse.
"""

import argparse
import io
import os
import statistics
import sys
import time
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'tests'))
sys.path.insert(0, os.path.dirname(HERE))

import livestream_api  # noqa: E402
from ingest_support import stat_xml  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--streams', type=int, default=2000)
    parser.add_argument('--runs', type=int, default=20)
    args = parser.parse_args()
    xml = stat_xml(*({'name': '%016d' % number, 'bw_in': 2500000, 'bytes_in': 10 ** 8,
                      'viewers': 1} for number in range(args.streams)))
    times = []
    for _ in range(args.runs):
        began = time.perf_counter()
        streams = livestream_api.parse_rtmp_stat(io.BytesIO(xml))
        times.append(time.perf_counter() - began)
        assert len(streams) == args.streams
    tracemalloc.start()
    livestream_api.parse_rtmp_stat(io.BytesIO(xml))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    median = statistics.median(times)
    print('%d streams, %.2f MB of XML: median %.1f ms, worst %.1f ms, %.1f ms per 1,000 '
          'streams; peak %.1f MB traced during a parse (the result included)'
          % (args.streams, len(xml) / 1e6, median * 1000, max(times) * 1000,
             median * 1000 * 1000 / args.streams, peak / 1e6))


if __name__ == '__main__':
    main()
