use clap::Parser as _;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let cli = memtrace_user::cli::Cli::parse();
    let on_error = cli.error_code();
    match cli.execute() {
        Ok(code) => std::process::exit(i32::from(code)),
        Err(e) => {
            eprintln!("memtrace: error: {}", one_line(&e));
            std::process::exit(i32::from(on_error));
        }
    }
}

/// The error and its causes on one line, each cause once: many messages
/// already name their cause, and the fix must stay visible at the end.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg.replace('\n', " ")
}
