//! `mango-callback sandbox`: the app against simulated Bitrix24 and Mango, with a scripted demo.

pub async fn run(
    _args: crate::config::SettingsArgs,
    _bitrix_port: u16,
    _mango_port: u16,
    _exit: bool,
) -> anyhow::Result<()> {
    anyhow::bail!("the sandbox demo is not built yet")
}
