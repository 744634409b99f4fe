"""The README as a reader uses it: its commands run as printed, its examples in order,
and it names no file the repository does not have."""

import importlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import livestream_api
from e2e_support import free_port, port_open, wait_for

REPO = Path(livestream_api.__file__).resolve().parent
README = (REPO / 'README.md').read_text(encoding='utf-8')

#: What marks a block of the Endpoints story: the next ```sh block is run.
STORY_MARK = '<!-- story -->'


def story_blocks(readme):
    """The ```sh blocks right after each STORY_MARK, in the README's order."""
    return re.findall(re.escape(STORY_MARK) + r'\s*```sh\n(.*?)```', readme, flags=re.S)


def expected_statuses(block):
    """The status each curl in block must answer: the first `# NNN` after it."""
    statuses = []
    for command in re.split(r'(?=^.*\bcurl )', block, flags=re.M)[1:]:
        found = re.search(r'#\s*(\d{3})\b', command)
        assert found, 'a story curl without its status in a comment:\n' + command
        statuses.append(int(found.group(1)))
    return statuses


#: Runs before the story: curl as the reader's, plus each answer's status
#: appended to $STATUS_LOG, so the test can check it.
CURL_RECORDING_STATUS = r'''
curl() {
    local body status
    body=$(mktemp)
    status=$(command curl -sS -o "$body" -w '%{http_code}' "$@") || { rm -f "$body"; return 1; }
    echo "$status" >> "$STATUS_LOG"
    cat "$body"; echo
    rm -f "$body"
}
set -euo pipefail
'''


@pytest.fixture
def server(tmp_path):
    """`livestream-api serve` on a fresh database, with an environment admin: its URL."""
    port = free_port()
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(('LIVESTREAM_', 'LIVE_TOKEN_'))}
    env.update(PYTHONPATH=str(REPO), LIVE_TOKEN_ID='readme-admin',
               LIVE_TOKEN_SECRET='readme-admin-secret-0123456789',
               # the story calls no hook; the API's port + 1 may be taken
               LIVESTREAM_SERVER_HOOK_LISTEN='127.0.0.1:0')
    log = open(tmp_path / 'serve.log', 'w+')
    process = subprocess.Popen(
        [sys.executable, '-m', 'livestream_api', 'serve', '--port', str(port),
         '--db', str(tmp_path / 'readme.db')],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: process.poll() is not None or port_open(port), 30, 'serve to listen')
        assert process.poll() is None, (tmp_path / 'serve.log').read_text()
        yield 'http://127.0.0.1:%d' % port, env
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        log.close()


def test_endpoint_examples_run_in_order_as_one_story(server, tmp_path):
    missing = [program for program in ('curl', 'jq') if shutil.which(program) is None]
    if missing:
        # As the end-to-end tests: CI (LIVESTREAM_E2E=1) installs them, so there it fails.
        assert os.environ.get('LIVESTREAM_E2E') != '1', 'the README story needs %s' % missing
        pytest.skip('the README story needs %s' % ' and '.join(missing))
    url, env = server
    blocks = story_blocks(README)
    assert len(blocks) >= 5, 'the README lost its %s blocks' % STORY_MARK
    story = '\n'.join(blocks)
    assert 'API=http://127.0.0.1:8080 ' in story, 'the story no longer sets $API first'
    story = story.replace('API=http://127.0.0.1:8080 ', 'API=%s ' % url, 1)
    status_log = tmp_path / 'statuses'
    result = subprocess.run(
        ['bash', '-c', CURL_RECORDING_STATUS + story], cwd=tmp_path,
        env=dict(env, STATUS_LOG=str(status_log)), capture_output=True, text=True, timeout=120)
    answered = [int(line) for line in status_log.read_text().split()] \
        if status_log.exists() else []
    commands = [command.splitlines()[0] for block in blocks
                for command in re.split(r'(?=^.*\bcurl )', block, flags=re.M)[1:]]
    expected = [status for block in blocks for status in expected_statuses(block)]
    report = '\n'.join('%s %s  %s' % (want, got, command) for want, got, command in
                       itertools.zip_longest(expected, answered, commands, fillvalue='-'))
    assert (result.returncode, answered) == (0, expected), \
        'expected, answered, command:\n%s\nexit status %d; stderr ends:\n%s' % (
            report, result.returncode, result.stderr[-3000:])


def test_story_covers_every_endpoint():
    """Each JSON API route but the ingest hook has an example in the story; the
    dashboard's (HTML, outside /v1, opened in a browser) are named in the README."""
    story = re.sub(r'\\\n', ' ', '\n'.join(story_blocks(README)))
    examples = set()
    for line in story.splitlines():
        if 'curl ' not in line:
            continue
        method = re.search(r'-X (\w+)', line)
        method = method.group(1) if method else ('POST' if ' -d ' in line else 'GET')
        path = re.search(r'\$API(/v1/[^\s"?]*)', line).group(1)
        examples.add((method, re.sub(r'\$\w+|\bbob\b', '<>', path)))
    routes = {(method, re.sub(r'<\w+>', '<>', path))
              for method, path, *_ in livestream_api.ROUTES
              if path.startswith('/v1/') and '/hooks/' not in path}
    assert routes - examples == set()
    pages = [path for method, path, *_ in livestream_api.ROUTES if not path.startswith('/v1/')]
    assert pages and [path for path in pages if '`%s`' % path not in README] == []


def test_readme_names_no_file_outside_the_repository():
    """The README and /v1/openapi.json are the whole reference: every file it names
    is in the repository."""
    assert 'API.md' not in README
    assert '../' not in README
    named = set(re.findall(r'`([\w.-][\w./-]*\.(?:md|py|ini|sql|toml|service|sh))(?:::[^`]*)?`',
                           README))
    # Absolute paths are where things go on the reader's host (/etc/...), not references.
    missing = [name for name in named if not any(
        (REPO / folder / name).exists() for folder in ('', 'tests', 'examples'))]
    assert missing == []


def test_tests_print_no_warnings():
    """A warning at the end of every run trains people to ignore the next one: the
    filters in pyproject.toml (in force here) silence webob's import of cgi."""
    saved = {name: sys.modules.pop(name) for name in ('cgi', 'webob.compat')
             if name in sys.modules}
    try:
        with warnings.catch_warnings(record=True) as caught:
            importlib.import_module('webob.compat')
    finally:
        sys.modules.update(saved)
    assert [str(warning.message) for warning in caught] == []
