//! `echo`: read lines typed on the console and print them back as
//! "guest: echo: <line>" until the line "quit". Tests the hypervisor's
//! console input path and focus switching between VMs.

use vigil_guest::{console, println, report, BootInfo};

pub fn run(_boot: &'static BootInfo) -> ! {
    println!("echo: ready");
    let mut line = [0u8; 80];
    let mut len = 0;
    loop {
        let Some(b) = console::try_getc() else {
            core::hint::spin_loop();
            continue;
        };
        match b {
            b'\r' | b'\n' => {
                let text = core::str::from_utf8(&line[..len]).unwrap_or("?");
                println!("echo: {text}");
                if text == "quit" {
                    report::pass("echo");
                }
                len = 0;
            }
            _ if len < line.len() => {
                line[len] = b;
                len += 1;
            }
            _ => {}
        }
    }
}
