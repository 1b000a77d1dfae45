"""`ortrefine serve`: the OpenAI-compatible HTTP server (the `serve` extra: starlette + uvicorn)."""

from __future__ import annotations

import click

from ortrefine.cli.common import MAX_THREADS, PROVIDER_CHOICES, FiniteFloat, ModelName, domain_errors


@click.command()
@click.argument("bundles", nargs=-1, required=True, type=ModelName())
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback exposes the models to the network: set --api-key.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port (printed).")
@click.option("--api-key", envvar="ORTREFINE_API_KEY", default=None,
              help="Require `Authorization: Bearer KEY` on /v1 (or set ORTREFINE_API_KEY, which keeps it out of `ps`).")
@click.option("--max-tokens-limit", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Most new tokens one choice may ask for.")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=1 << 20, show_default=True,
              help="Larger request bodies get 413.")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Sequences decoded together per model; more wait their turn.")
@click.option("--max-queue", type=click.IntRange(min=1), default=256, show_default=True,
              help="Sequences waiting per model before requests get 429.")
@click.option("--max-connections", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Open connections at most; more get 503.")
@click.option("--refine-seconds-limit", type=FiniteFloat(0, min_open=True), default=60.0, show_default=True,
              help="Wall-time budget of one /v1/refine call at most (and its default).")
@click.option("--drain-seconds", type=FiniteFloat(0), default=30.0, show_default=True,
              help="On SIGTERM/Ctrl-C, how long in-flight requests may take to finish.")
@click.option("--provider", type=click.Choice(PROVIDER_CHOICES), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None, help="Intra-op threads per model.")
@domain_errors
def serve(bundles: tuple[str, ...], host: str, port: int, api_key: str | None, max_tokens_limit: int, max_body_bytes: int,
          max_batch: int, max_queue: int, max_connections: int, refine_seconds_limit: float, drain_seconds: float, provider: str,
          threads: int | None) -> None:
    """Serve BUNDLE... over HTTP: /v1/completions, /v1/chat/completions (OpenAI's API), /v1/refine, /v1/models, /health.

    Stops on Ctrl-C or SIGTERM after the requests in flight have finished.
    """
    from ortrefine.serve.models import load_models
    from ortrefine.serve.server import require_serve_extra, serve_forever
    from ortrefine.serve.settings import ServeSettings

    require_serve_extra()  # before minutes of loading

    settings = ServeSettings(host=host, port=port, api_key=api_key, max_tokens_limit=max_tokens_limit, max_body_bytes=max_body_bytes,
                             max_batch=max_batch, max_queue=max_queue, max_connections=max_connections,
                             refine_seconds_limit=refine_seconds_limit, drain_seconds=drain_seconds, provider=provider, threads=threads)
    if settings.exposed and settings.api_key is None:
        click.echo(f"warning: listening on {host} without --api-key: anyone who can reach this port can use the models", err=True)
    models = load_models(bundles, settings)
    names = ", ".join(models)
    try:
        serve_forever(models, settings, on_ready=lambda url: click.echo(f"serving {names} on {url}", err=True))
    except KeyboardInterrupt:  # uvicorn re-raises the signal it drained on; the drain is done
        pass
    finally:
        for m in models.values():
            m.close(drain=False)
    click.echo("stopped; in-flight requests were finished", err=True)


commands = [serve]
