from flaskr import create_app


def test_config():
    assert not create_app().testing
    assert create_app({"TESTING": True}).testing


def test_init_db_command(runner):
    result = runner.invoke(args=["init-db"])
    assert "Initialized" in result.output
