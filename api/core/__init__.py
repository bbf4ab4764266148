"""Cross-cutting pieces of the service: settings, database, storage, broker, errors, ids."""


def reset_caches() -> None:
    """Forget every cached Settings-derived object (tests, or a CLI that changed --data-dir).

    Settings, engine (disposed, so its pooled connections close), sessionmaker, storage and the
    Celery app are all built once from Settings; after the environment changes they must be rebuilt.
    """
    from api.core.broker import get_celery
    from api.core.db import get_engine, get_reader_sessionmaker, get_sessionmaker, get_writer_sessionmaker
    from api.core.settings import get_settings
    from api.core.storage import get_storage
    from api.jobs import dispatch

    dispatch.flush()  # job ids still waiting to be sent go out through the engine and broker they were made for

    if get_engine.cache_info().currsize:
        get_engine().dispose()
    if get_celery.cache_info().currsize:
        get_celery().close()
    for cached in (
        get_settings,
        get_engine,
        get_sessionmaker,
        get_reader_sessionmaker,
        get_writer_sessionmaker,
        get_storage,
        get_celery,
    ):
        cached.cache_clear()
