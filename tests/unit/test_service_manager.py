"""What runs the services is decided in one place, and whatever runs them restarts what dies.

The service_manager role alone finds out whether systemd runs services; the
other roles hand it their services and restart them through it. Checked here
on the roles' files, without a host: the supervisord programs and systemd
drop-ins as the roles would render them for the four services.
"""

import configparser
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "roles"
SERVICE_ROLES = ("kamailio", "rtpengine", "callbackd")
MANAGER = ROLES / "service_manager"
# How other code would find the service manager, or start a service behind its back.
OTHER_WAYS = ("ansible_service_mgr", "/run/systemd/system", "ansible.builtin.service:",
              "ansible.builtin.systemd", "ansible.builtin.sysvinit", "use: sysvinit")
FOREGROUND = {
    "kamailio": "/usr/local/sbin/kamailio-foreground",
    "rtpengine-daemon": "/usr/bin/rtpengine --foreground --config-file=/etc/rtpengine/rtpengine.conf",
    "callbackd": "/opt/vpbx/venv/bin/python3 -m callbackd --config /etc/vpbx/callbackd.json",
    "rsyslog": "/usr/sbin/rsyslogd -n -iNONE",
}


def yaml_files(role: Path) -> list[Path]:
    return sorted(p for p in role.rglob("*.yml") if "meta" not in p.parts)


def role_variables(role: Path) -> dict:
    variables: dict = {"runtime_prefix": "/opt/vpbx"}
    for part in ("defaults", "vars"):
        path = role / part / "main.yml"
        if path.is_file():
            variables.update(yaml.safe_load(path.read_text()) or {})
    return variables


def rendered(value, variables: dict):
    """A role's value with its Jinja expressions resolved (repeatedly: vars refer to vars)."""
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
    environment.filters["quote"] = lambda s: s
    for _ in range(5):
        if not isinstance(value, str) or "{{" not in value:
            return value
        value = environment.from_string(value).render(**variables)
    return value


def services_handed_over() -> dict[str, dict]:
    """Every service a role hands to service_manager (tasks_from: service), with its vars resolved."""
    found = {}
    for name in SERVICE_ROLES:
        role = ROLES / name
        variables = role_variables(role)
        for path in yaml_files(role / "tasks"):
            for task in yaml.safe_load(path.read_text()) or []:
                include = task.get("ansible.builtin.include_role") or {}
                if include.get("name") == "service_manager" and include.get("tasks_from") == "service":
                    own = {k: rendered(v, {**variables, **task["vars"]}) for k, v in task["vars"].items()}
                    found[own["service_manager_service"]] = own
    return found


def program(service: dict) -> configparser.SectionProxy:
    defaults = yaml.safe_load((MANAGER / "defaults" / "main.yml").read_text())
    template = (MANAGER / "templates" / "etc" / "supervisor" / "conf.d" / "program.conf.j2").read_text()
    text = jinja2.Environment(trim_blocks=True, undefined=jinja2.StrictUndefined).from_string(
        template).render({**defaults, **service, "ansible_managed": "managed"})
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    parser.read_string(text)
    return parser[f"program:{service['service_manager_service']}"]


def test_only_the_service_manager_role_knows_what_runs_services():
    for role in sorted(p for p in ROLES.iterdir() if p != MANAGER):
        for path in yaml_files(role):
            text = path.read_text()
            for way in OTHER_WAYS:
                assert way not in text, f"{path.relative_to(REPO)} uses {way}"


def test_tests_and_benches_read_the_manager_the_role_recorded():
    from vpbx_testing import services

    defaults = yaml.safe_load((MANAGER / "defaults" / "main.yml").read_text())
    assert str(services.RECORD) == defaults["service_manager_record"]
    code = [p for folder in ("tests", "bench", "cluster") for p in (REPO / folder).rglob("*.py")]
    for path in code:
        if path != Path(__file__):
            for way in ("ansible_service_mgr", "/run/systemd/system", "sd_booted"):
                assert way not in path.read_text(), f"{path.relative_to(REPO)} finds the manager again: {way}"


def test_tests_and_benches_stop_services_through_the_manager_not_init_scripts():
    running_an_init_script = '["service", '
    for path in [*(REPO / "tests" / "e2e").rglob("*.py"), *(REPO / "bench").glob("*.py")]:
        assert running_an_init_script not in path.read_text(), f"{path.relative_to(REPO)} runs `service`"


def test_the_four_services_are_handed_to_the_service_manager():
    assert set(services_handed_over()) == set(FOREGROUND)


def test_every_restart_and_reload_handler_goes_through_the_service_manager():
    for name in SERVICE_ROLES:
        for handler in yaml.safe_load((ROLES / name / "handlers" / "main.yml").read_text()):
            if handler["name"].startswith("Restart") or handler["name"] == "Reload callbackd":
                argv = (handler.get("ansible.builtin.command") or {}).get("argv", "")
                assert argv.startswith(("{{ service_manager_restart + ", "{{ service_manager_reload + ")), \
                    f"{name}: handler {handler['name']!r} restarts behind the service manager's back"


def test_the_service_managers_restart_and_reload_commands():
    commands = yaml.safe_load((MANAGER / "vars" / "main.yml").read_text())["__service_manager_commands"]
    assert commands == {
        "systemd": {"restart": ["systemctl", "restart"], "reload": ["systemctl", "reload"],
                    "hangup": ["systemctl", "kill", "--signal=HUP", "--kill-whom=main"]},
        "supervisor": {"restart": ["supervisorctl", "restart"], "reload": ["supervisorctl", "signal", "HUP"],
                       "hangup": ["supervisorctl", "signal", "HUP"]},
    }


@pytest.mark.parametrize("name", sorted(FOREGROUND))
def test_supervisord_runs_each_service_in_the_foreground_and_restarts_it_whenever_it_dies(name):
    section = program(services_handed_over()[name])
    assert section["command"] == FOREGROUND[name]
    assert section["autorestart"] == "true"
    assert section["autostart"] == "true"
    assert section["startsecs"] == "1"
    assert int(section["startretries"]) >= 100_000


def test_each_service_runs_as_its_init_script_ran_it():
    handed = services_handed_over()
    users = {name: program(service).get("user") for name, service in handed.items()}
    # Kamailio and rsyslog start as root (Kamailio drops to its user with -u/-g).
    assert users == {"kamailio": None, "rtpengine-daemon": "rtpengine", "callbackd": "vpbx", "rsyslog": None}
    assert {name: s["service_manager_init_script"] for name, s in handed.items()} == {
        "kamailio": "kamailio", "rtpengine-daemon": "rtpengine-daemon", "callbackd": "callbackd",
        "rsyslog": "rsyslog"}


def test_systemd_restarts_every_unit_whenever_it_dies():
    dropin = configparser.ConfigParser()
    dropin.read_string((MANAGER / "templates" / "etc" / "systemd" / "system" / "unit.d"
                        / "restart.conf.j2").read_text().replace("{{ ansible_managed }}", ""))
    unit = configparser.ConfigParser(interpolation=None)
    unit.read_string((ROLES / "callbackd" / "templates" / "etc" / "systemd" / "system"
                      / "callbackd.service.j2").read_text().replace("{{ ansible_managed }}", ""))
    for config in (dropin, unit):
        assert config["Service"]["Restart"] == "always"
        assert config["Service"]["RestartSec"] == "1"
        assert config["Unit"]["StartLimitIntervalSec"] == "0"
    packaged = {name for name, service in services_handed_over().items()
                if service.get("service_manager_packaged_unit", True)}
    assert packaged == {"kamailio", "rtpengine-daemon", "rsyslog"}


def test_kamailio_in_the_foreground_keeps_the_init_scripts_options_and_pid_file(tmp_path):
    variables = role_variables(ROLES / "kamailio")
    template = (ROLES / "kamailio" / "templates" / "usr" / "local" / "sbin"
                / "kamailio-foreground.j2").read_text()
    script = tmp_path / "kamailio-foreground"
    script.write_text(rendered(template, {**variables, "ansible_managed": "managed"}))
    subprocess.run(["sh", "-n", str(script)], check=True)
    text = script.read_text()
    assert ". /etc/default/kamailio" in text
    assert "PIDFILE=/run/kamailio/kamailio.pid" in text
    exec_line = next(line for line in text.splitlines() if line.startswith("exec "))
    assert exec_line.split() == [
        "exec", "/usr/sbin/kamailio", "-DD", "-P", '"$PIDFILE"', "-f", '"$CFGFILE"', "-m", '"$SHM_MEMORY"',
        "-M", '"$PKG_MEMORY"', "-u", '"$USER"', "-g", '"$GROUP"',
        # Empty, or the define of a start without the location store.
        "$DEFINES"]
