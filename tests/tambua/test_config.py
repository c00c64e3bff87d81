from pathlib import Path

import pytest

from tambua.config import Config


def test_defaults_file_env_and_overrides(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text('port = 6000\nverify_fmr = 0.0001\ndata_dir = "/srv/tambua"\ninsecure = true\n')
    c = Config.load(f, env={"TAMBUA_PORT": "7000", "TAMBUA_WORKERS": "3"}, metrics_port=-1)
    assert c.port == 7000 and c.workers == 3 and c.metrics_port == -1
    assert c.verify_fmr == 0.0001 and c.data_dir == Path("/srv/tambua")
    assert c.thresholds.verify_fmr == 0.0001
    assert c.insecure and c.tls_cert is None
    assert Config.load(env={"TAMBUA_INSECURE": "yes"}).port == 50051


def test_tls_settings_from_the_environment(tmp_path):
    c = Config.load(env={"TAMBUA_TLS_CERT": "/etc/t/server.pem", "TAMBUA_TLS_KEY": "/etc/t/server.key",
                         "TAMBUA_CLIENT_CA": "/etc/t/ca.pem", "TAMBUA_API_KEYS": "false"})
    assert not c.insecure and c.tls_cert == Path("/etc/t/server.pem") and c.client_ca == Path("/etc/t/ca.pem")
    assert c.api_keys is False


@pytest.mark.parametrize(
    "text", ['prot = 1\n', 'port = 70000\n', 'verify_fmr = 2.0\n', 'workers = 0\n', 'api_keys = "maybe"\n',
             'finger_network = "bozorth"\n'],
    ids=["unknown-key", "port-range", "rate-range", "workers", "not-a-boolean", "finger-network"],
)
def test_invalid_configuration_is_refused_at_start(tmp_path, text):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ValueError):
        Config.load(f, env={"TAMBUA_INSECURE": "true"})


@pytest.mark.parametrize("env", [
    pytest.param({}, id="no-tls-and-not-insecure"),
    pytest.param({"TAMBUA_TLS_CERT": "c.pem", "TAMBUA_TLS_KEY": "k.pem", "TAMBUA_API_KEYS": "off"},
                 id="no-way-in-without-keys-or-client-ca"),
])
def test_an_open_or_locked_out_server_is_refused(env):
    with pytest.raises(ValueError):
        Config.load(env=env)


def test_finger_network_from_the_environment_and_the_store_guard():
    from tambua.server import refuse_foreign_templates
    from matcher.errors import ModelMismatch

    assert Config.load(env={"TAMBUA_INSECURE": "1"}).finger_network == "auto"
    assert Config.load(env={"TAMBUA_INSECURE": "1", "TAMBUA_FINGER_NETWORK": "lite"}).finger_network == "lite"
    running = {"face": "face/dlib-resnet-v1", "finger": "finger/lite-mcc-v1", "iris": "iris/gabor-v2"}
    refuse_foreign_templates({("finger", "finger/lite-mcc-v1"): 20, ("iris", "iris/gabor-v2"): 2}, running)
    with pytest.raises(ModelMismatch, match="20 finger templates of finger/leader-mcc-v1"):
        refuse_foreign_templates({("finger", "finger/leader-mcc-v1"): 20, ("face", "face/dlib-resnet-v1"): 1}, running)
