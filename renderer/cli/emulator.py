"""The `emulator` command: the built-in fal emulator in the foreground, its flags checked here.

The emulator (and aiohttp) is imported only when the command runs: start-up is measured.
"""

from __future__ import annotations

from renderer import settings
from renderer.cli.context import Context
from renderer.errors import UsageError


def cmd_emulator(ctx: Context) -> int:
    """Run the emulator in the foreground until interrupted."""
    import asyncio
    import ssl

    from renderer.provider.emulator import Emulator, EmulatorConfig, Faults, ServiceTime

    a = ctx.args
    # Each --key-env is one account, named in the stats by its variable (never by the key).
    keys: list[tuple[str, str]] = []
    for name in a.key_env:
        key = ctx.env.get(name)
        if not key:
            raise UsageError(
                f"--key-env {name}: that environment variable is not set",
                hint=f"export {name}=… first, or drop --key-env to accept any caller",
            )
        if any(key == k for _, k in keys):
            raise UsageError(
                f"--key-env {name}: holds the same key as another --key-env",
                hint="give each account its own key",
            )
        keys.append((name, key))
    for label in a.lock_account:
        if label not in a.key_env:
            raise UsageError(
                f"--lock-account {label}: not one of the --key-env accounts",
                hint=f"allowed: {', '.join(a.key_env) or 'none (give --key-env first)'}",
            )
    try:
        service = ServiceTime.parse(a.latency)
        for value in (service.a, service.b):  # seconds (or lognormal's sigma): finite, 0 to an hour
            settings.parse("latency", value)
        if service.kind == "uniform" and service.a > service.b:
            raise ValueError(f"service time {a.latency!r}: LOW is above HIGH")
    except settings.SettingError as exc:
        raise UsageError(
            f"--latency {a.latency!r}: {exc.message}", hint=f"allowed: {exc.allowed}"
        ) from None
    except ValueError as exc:
        raise UsageError(f"--latency {a.latency!r}: {exc}") from None
    faults = Faults(
        submit_429=a.fault_429,
        ingress_5xx=a.fault_ingress,
        runner_error=a.fault_runner,
        drop_download=a.fault_drop,
        truncate_image=a.fault_truncate,
        corrupt_image=a.fault_corrupt,
        stuck=a.fault_stuck,
        retention=a.retention,
        lock_after=a.lock_after,
        result_500=a.fault_result_500,
        submit_html=a.fault_submit_html,
        submit_500_with_id=a.fault_submit_500,
    )
    variants = tuple(tuple(v.split("=", 1)) for v in a.variant)
    config = EmulatorConfig(
        host=a.host,
        port=a.port,
        workers=a.workers,
        account_slots=a.account_slots,
        service=service,
        seed=a.seed,
        keys=tuple(keys),
        locked=tuple(a.lock_account),
        max_side=a.max_side or None,
        faults=faults,
        keepalive=a.keepalive,
        variants=variants,
        noise=a.noise,
        allow_unknown=a.allow_unknown,
    )
    context = None
    if a.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(a.tls_cert, a.tls_key)

    async def serve() -> None:
        async with Emulator(config, ssl_context=context, registry=ctx.registry()) as emu:
            ctx.print(emu.url)
            ctx.out.flush()
            ctx.note(
                f"emulator: {config.workers} worker slots, service time {a.latency}; Ctrl-C stops it"
            )
            await asyncio.Event().wait()

    asyncio.run(serve())
    return 0
