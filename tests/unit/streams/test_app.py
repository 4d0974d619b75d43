"""The Faust app as the agents worker builds it (no broker needed to build it)."""

from pathlib import Path

from services.shared.settings import Settings
from streams.app import create_app


def test_the_agents_datadir_lives_under_the_data_dir_even_when_it_does_not_exist_yet(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # Faust's default would be ./<app id>-data here
    monkeypatch.setattr("streams.app.Publisher", lambda _settings: None)  # no broker here
    data_dir = tmp_path / "fresh" / "data"
    app = create_app(Settings(data_dir=data_dir, agents_app_id="agents-test"))
    assert Path(app.conf.datadir) == data_dir / "agents"
    assert (data_dir / "agents").is_dir()  # Faust itself makes only the last level
    assert not (tmp_path / "agents-test-data").exists()
