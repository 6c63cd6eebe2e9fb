from contracts.settings import Settings
from infra.worker_process import settings_env


def test_env_overrides_nested_groups(monkeypatch):
    monkeypatch.setenv("INTENTSTREAM_KAFKA__PORT", "19092")
    monkeypatch.setenv("INTENTSTREAM_TRIGGER__EVERY_N_EVENTS", "9")
    s = Settings()
    assert s.kafka.bootstrap.endswith(":19092") and s.trigger.every_n_events == 9


def test_settings_survive_the_trip_to_a_child_process(monkeypatch):
    original = Settings(key_prefix="x:")
    original = original.model_copy(update={"worker": original.worker.model_copy(update={"batch_max": 77})})
    for key, value in settings_env(original).items():
        monkeypatch.setenv(key, value)
    assert Settings() == original


def test_secrets_reach_a_child_process_but_no_print_or_log(monkeypatch):
    from pydantic import SecretStr

    secret = "s3cret-Value"
    original = Settings()
    original = original.model_copy(update={
        "intent": original.intent.model_copy(update={"openai_api_key": SecretStr(secret)}),
        "trainer": original.trainer.model_copy(update={"holdout_key": SecretStr(secret + "2")})})
    for key, value in settings_env(original).items():
        monkeypatch.setenv(key, value)
    assert Settings() == original  # through the environment of `intentstream worker` / `reasoner`
    assert Settings.model_validate_json(original.transport_json()) == original  # through a pool's pipe
    assert Settings().intent.openai_api_key.get_secret_value() == secret
    for shown in (repr(original), str(original), original.model_dump_json()):
        assert secret not in shown
    from contracts.settings import env_example

    assert "\n# INTENTSTREAM_INTENT__OPENAI_API_KEY=\n" in env_example()  # defaults only: unset, commented out


def test_env_example_documents_every_setting_and_is_current():
    from pathlib import Path

    from contracts.settings import env_example

    text = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    missing = [k for k in settings_env(Settings()) if k not in text]
    assert not missing, f".env.example lacks {missing}"
    assert text == env_example(), "regenerate it: intentstream settings > .env.example"
