use clap::Parser as _;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let cli = memtrace_user::cli::Cli::parse();
    if let Err(e) = cli.execute() {
        // One line: the cause chain joined, so the fix stays visible.
        eprintln!("memtrace: error: {e:#}");
        std::process::exit(1);
    }
}
