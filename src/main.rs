//! Binary entry point: read settings, start logging, run the chosen command.

use clap::Parser;
use mango_callback::config::{Cli, Command, Settings};
use mango_callback::startup::{Application, RunOptions};

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    // The sandbox prints its own trace; only warnings from the app would interrupt it.
    let default_filter = if matches!(
        cli.command,
        Some(Command::Sandbox { .. } | Command::Bench(_))
    ) {
        "warn"
    } else {
        "info"
    };
    mango_callback::telemetry::init_as(default_filter, cli.log_format);
    mango_callback::telemetry::install_panic_hook();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.settings).await,
        #[cfg(feature = "sandbox")]
        Command::Sandbox {
            bitrix_port,
            mango_port,
            exit,
        } => mango_callback::sandbox::demo::run(cli.settings, bitrix_port, mango_port, exit).await,
        #[cfg(feature = "sandbox")]
        Command::Bench(args) => mango_callback::sandbox::bench::command(args).await,
        #[cfg(not(feature = "sandbox"))]
        Command::Sandbox { .. } | Command::Bench(_) => Err(anyhow::anyhow!(
            "this build has no sandbox: it was built without the `sandbox` feature \
             (build with the default features to run the demo or the bench)"
        )),
        Command::RotateKey { old_key } => rotate_key(cli.settings, old_key).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mango-callback: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn rotate_key(
    args: mango_callback::config::SettingsArgs,
    old_key: Option<mango_callback::config::SecretArg>,
) -> anyhow::Result<()> {
    let counts = mango_callback::portal::reseal::rotate_key_command(args, old_key).await?;
    println!("rotate-key: re-sealed {counts} under the new key in one transaction; start every instance with the new APP_SECRET_KEY");
    Ok(())
}

async fn serve(args: mango_callback::config::SettingsArgs) -> anyhow::Result<()> {
    let settings = Settings::from_args(args)?;
    if !settings.public_url_explicit {
        tracing::warn!("APP_PUBLIC_URL is not set: Bitrix24 cannot reach http://{}; set it to the https URL of this app", settings.bind);
    }
    if settings.b24_client_id.is_none() || settings.b24_client_secret.is_none() {
        tracing::warn!("B24_CLIENT_ID / B24_CLIENT_SECRET are not set: installs and token refreshes will be refused until they are");
    }
    if settings.allow_private_peers {
        tracing::warn!("APP_SANDBOX_PRIVATE_PEERS is set: plain-http and loopback portals are admitted; for test harnesses only");
    }
    tracing::info!(settings = ?settings, "starting");
    let app = Application::build(settings, RunOptions::default()).await?;
    tracing::info!(port = app.port(), "listening");
    let stopper = app.stopper();
    actix_web::rt::spawn(async move {
        let signal = stop_signal().await;
        tracing::info!(
            signal,
            "stopping: no new requests or jobs; running ones finish or are released"
        );
        stopper.stop().await;
    });
    app.run_until_stopped().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Waits for SIGTERM (systemd, container runtimes) or SIGINT (Ctrl-C); names the one that came.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "SIGINT"
}
