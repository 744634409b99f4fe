"""examples/: the systemd units README "Running in production" installs."""

import os
import re
import shlex
import shutil
import subprocess
from configparser import ConfigParser
from pathlib import Path

import pytest

import livestream_api

REPO = Path(livestream_api.__file__).resolve().parent
UNITS = [REPO / 'examples' / 'livestream-api.service', REPO / 'examples' / 'nginx-rtmp.service']
#: Where systemd's own units are (the targets a unit file names).
SYSTEM_UNITS = next((path for path in (Path('/usr/lib/systemd/system'),
                                        Path('/lib/systemd/system')) if path.is_dir()), None)


def unit(path):
    """{section: {key: [values]}} of a unit file (a key may repeat: ExecStartPre)."""
    sections, current = {}, None
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        if line.startswith('['):
            current = sections.setdefault(line.strip('[]'), {})
        else:
            key, value = line.split('=', 1)
            current.setdefault(key, []).append(value)
    return sections


def commands(service):
    """Every Exec*= command line of a [Service] section, as argv lists."""
    return [shlex.split(value.lstrip('-@:+!')) for key, values in service.items()
            if key.startswith('Exec') for value in values]


def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path):
    if shutil.which('systemd-analyze') is None or SYSTEM_UNITS is None:
        # As the end-to-end tests: CI (LIVESTREAM_E2E=1) installs systemd, so there it fails.
        assert os.environ.get('LIVESTREAM_E2E') != '1', 'systemd-analyze is missing'
        pytest.skip('systemd-analyze is missing (Debian package systemd)')
    # A root of its own: systemd's units, the two examples, and a stand-in for each
    # program they run (verify insists that each exists, and they are not installed here).
    root = tmp_path / 'root'
    shutil.copytree(SYSTEM_UNITS, root / 'usr' / 'lib' / 'systemd' / 'system', symlinks=True)
    installed = root / 'etc' / 'systemd' / 'system'
    installed.mkdir(parents=True)
    for path in UNITS:
        shutil.copy(path, installed)
        for argv in commands(unit(path)['Service']):
            program = root / argv[0].lstrip('/')
            program.parent.mkdir(parents=True, exist_ok=True)
            program.write_text('#!/bin/sh\n')
            program.chmod(0o755)
    result = subprocess.run(
        ['systemd-analyze', 'verify', '--root', str(root)]
        + [str(installed / path.name) for path in UNITS],
        capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout + result.stderr) == (0, '')


def test_the_api_unit_runs_sandboxed_as_its_own_user():
    service = unit(UNITS[0])['Service']
    for key, value in [('User', 'livestream'), ('StateDirectory', 'livestream-api livestream-nginx'),
                       ('KillSignal', 'SIGTERM'), ('NoNewPrivileges', 'yes'),
                       ('ProtectSystem', 'strict'), ('PrivateTmp', 'yes'), ('UMask', '0077')]:
        assert service.get(key) == [value], key
    serve = shlex.split(service['ExecStart'][0])
    assert serve[0].startswith('/') and serve[1] == 'serve'
    assert serve[serve.index('--config') + 1].startswith('/')


def test_the_units_commands_are_this_cli_and_agree_on_nginx_conf(tmp_path):
    """The API unit's commands, with its paths moved under tmp_path, run here: they
    leave a 0600 nginx.conf where the nginx unit looks for it."""
    api, nginx = (unit(path)['Service'] for path in UNITS)
    config = tmp_path / 'etc' / 'livestream-api' / 'config.ini'
    config.parent.mkdir(parents=True)
    config.write_text('[database]\npath = %s/var/lib/livestream-api/livestream.db\n' % tmp_path)
    for name in ('livestream-api', 'livestream-nginx'):
        (tmp_path / 'var' / 'lib' / name).mkdir(parents=True)

    def moved(argument):
        return re.sub(r'^(/etc/|/var/)', lambda match: str(tmp_path) + match.group(1), argument)

    for argv in commands(api):
        assert argv[0] == '/opt/livestream-api/.venv/bin/livestream-api'
        livestream_api._parser().parse_args(argv[1:])
        if argv[1] != 'serve':
            assert livestream_api.main([moved(argument) for argument in argv[1:]],
                                       environ={}) == 0, argv
    nginx_conf = Path(moved(shlex.split(nginx['ExecStart'][0])[-1]))
    assert nginx_conf.stat().st_mode & 0o777 == 0o600
    assert '/v1/hooks/nginx-rtmp?secret=' in nginx_conf.read_text()
    assert 'daemon off;' in nginx_conf.read_text()


def production_config():
    readme = (REPO / 'README.md').read_text(encoding='utf-8')
    section = readme.split('\n## Running in production\n', 1)[1].split('\n## ', 1)[0]
    return re.search(r'```ini\n(.*?)```', section, flags=re.S).group(1)


@pytest.mark.skipif('trusted_proxies' not in livestream_api.CONFIG_KEYS['server'],
                    reason='[server] trusted_proxies is not in this branch yet (issue 16, item 13)')
def test_the_production_config_in_the_readme_loads(tmp_path):
    path = tmp_path / 'config.ini'
    path.write_text(production_config())
    config = livestream_api.load_config(str(path), environ={})
    assert config['database']['path'] == '/var/lib/livestream-api/livestream.db'
    parser = ConfigParser()
    parser.read_string(production_config())
    assert parser['server']['trusted_proxies'] == '127.0.0.1'
