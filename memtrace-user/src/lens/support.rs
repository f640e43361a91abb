//! Whether each lens works on a binary, and why (not): what `doctor`
//! shows. Each lens's needs are its own knowledge, so they sit here.

use crate::binary::goruntime::GoBinary;
use crate::model::lens::Lens;

/// Whether each lens works on `bin` (attached to a running process when
/// `attach`), and why (not).
pub fn lens_support(bin: &GoBinary, attach: bool) -> Vec<(Lens, Result<String, String>)> {
    // Where a variable came from, or why it was not found.
    let from = |sym: &str| match bin.found.get(sym) {
        Some(Ok(source)) => Ok(format!("{sym} from {}", source.name())),
        Some(Err(why)) => Err(format!(
            "{sym} was not found ({why}){}",
            if bin.stripped {
                "; rebuild without -s"
            } else {
                ""
            }
        )),
        None => Err(format!("{sym} was not looked for")),
    };
    Lens::ALL
        .iter()
        .map(|&l| {
            let r = match l {
                Lens::Rss => Ok("page-fault tracepoint: any process".to_string()),
                Lens::Mmap => Ok("memory-syscall tracepoints: any process".to_string()),
                Lens::Alloc | Lens::Heap => from("runtime.mbuckets").and_then(|b| {
                    let r = from("runtime.MemProfileRate")?;
                    Ok(format!("reads the runtime's memory profile ({b}, {r})"))
                }),
                Lens::AllocExact => {
                    if bin.alloc_points.is_empty() {
                        Err("no allocator entry point found".to_string())
                    } else {
                        Ok(format!("{} allocator entry points", bin.alloc_points.len()))
                    }
                }
                Lens::Goroutines => match (&bin.goroutines, attach, from("runtime.allgs")) {
                    (Err(e), _, _) => Err(e.clone()),
                    (Ok(_), true, Err(why)) => Err(format!(
                        "in a running process the goroutines alive before tracing come from \
                         runtime.allgs: {why}; launching the program (record -- CMD) works"
                    )),
                    (Ok(_), false, Err(_)) => Ok(
                        "newproc1/goexit0 uprobes (launch mode; attaching to a running process needs runtime.allgs, not found here)"
                            .to_string(),
                    ),
                    (Ok(g), _, Ok(allgs)) => Ok(format!(
                        "{} uprobes a goroutine, {allgs}",
                        if g.spawned.is_some() { 2 } else { 3 }
                    )),
                },
            };
            (l, r)
        })
        .collect()
}
