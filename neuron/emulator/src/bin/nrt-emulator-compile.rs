//! `nrt-emulator-compile MODEL OUT [--prefill 32,128] [--prefill-batch 1]
//! [--decode 1,4,8] [--slots 8] [--max-context 512]`: an artifact folder for the
//! libnrt emulator (see `artifacts`), from a GGUF file or a Hugging Face folder.

use std::path::PathBuf;
use std::process::ExitCode;

use nrt_emulator::artifacts::{write, Buckets};

fn list(v: &str) -> Result<Vec<usize>, String> {
    v.split(',').map(|x| x.trim().parse().map_err(|_| format!("not a number list: {v}"))).collect()
}

fn parse() -> Result<(PathBuf, PathBuf, Buckets), String> {
    let mut args = std::env::args().skip(1);
    let usage =
        "usage: nrt-emulator-compile MODEL OUT [--prefill 32,128] [--prefill-batch 1] [--decode 1,4,8] \
                 [--slots 8] [--max-context 512]";
    let model = PathBuf::from(args.next().ok_or(usage)?);
    let out = PathBuf::from(args.next().ok_or(usage)?);
    let mut b = Buckets {
        prefill: vec![32, 128],
        prefill_batch: 1,
        decode: vec![1, 4, 8],
        kv_slots: 8,
        max_context: 512,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(usage)?;
        let one = |v: &str| v.parse::<usize>().map_err(|_| format!("{flag}: not a number: {v}"));
        match flag.as_str() {
            "--prefill" => b.prefill = list(&value)?,
            "--prefill-batch" => b.prefill_batch = one(&value)?,
            "--decode" => b.decode = list(&value)?,
            "--slots" => b.kv_slots = one(&value)?,
            "--max-context" => b.max_context = one(&value)?,
            _ => return Err(usage.into()),
        }
    }
    Ok((model, out, b))
}

fn main() -> ExitCode {
    match parse().and_then(|(model, out, buckets)| write(&model, &out, &buckets)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nrt-emulator-compile: {e}");
            ExitCode::FAILURE
        }
    }
}
