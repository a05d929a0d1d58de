import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: expensive (large models, 640 px); deselect with -m 'not slow'")


@pytest.fixture(scope="session")
def model_file(tmp_path_factory):
    """model_file(name, form="bn", **build_kwargs) -> Path of a saved model, built once per arguments.

    `external_data=True` is passed to models.save (weights in <file>.data). Each file gets its own
    folder, so the .data files of different models never meet."""
    import models

    root = tmp_path_factory.mktemp("models")
    cache = {}

    def get(name, form="bn", **kwargs):
        external = kwargs.pop("external_data", False)
        key = (name, form, external, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        if key not in cache:
            path = root / f"{len(cache):03d}-{name}-{form}" / f"{name}.onnx"
            models.save(models.build(name, form, **kwargs), path, external_data=external)
            cache[key] = path
        return cache[key]

    return get
