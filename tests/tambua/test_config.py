from pathlib import Path

import pytest

from tambua.config import Config


def test_defaults_file_env_and_overrides(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text('port = 6000\nverify_fmr = 0.0001\ndata_dir = "/srv/tambua"\n')
    c = Config.load(f, env={"TAMBUA_PORT": "7000", "TAMBUA_WORKERS": "3"}, metrics_port=-1)
    assert c.port == 7000 and c.workers == 3 and c.metrics_port == -1
    assert c.verify_fmr == 0.0001 and c.data_dir == Path("/srv/tambua")
    assert c.thresholds.verify_fmr == 0.0001
    assert Config.load(env={}).port == 50051


@pytest.mark.parametrize(
    "text", ['prot = 1\n', 'port = 70000\n', 'verify_fmr = 2.0\n', 'workers = 0\n'],
    ids=["unknown-key", "port-range", "rate-range", "workers"],
)
def test_invalid_configuration_is_refused_at_start(tmp_path, text):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ValueError):
        Config.load(f, env={})
