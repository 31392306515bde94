//! `inflight models list | pull`.

use anyhow::Result;

use super::{fetch_options, registry};
use crate::cli::ModelsCommand;
use inflight::hub;

pub fn run(cmd: ModelsCommand) -> Result<()> {
    match cmd {
        ModelsCommand::List(dirs) => {
            let reg = registry(&dirs)?;
            println!("{:<32} {:>10}  {:<8} DESCRIPTION", "NAME", "SIZE", "PRESENT");
            for st in hub::list(&reg, &fetch_options(&dirs)) {
                let size =
                    st.entry.size.map(|s| format!("{:.1} MB", s as f64 / 1e6)).unwrap_or_else(|| "?".into());
                let present = if st.local.is_some() { "yes" } else { "no" };
                println!("{:<32} {:>10}  {:<8} {}", st.entry.name, size, present, st.entry.description);
            }
            Ok(())
        }
        ModelsCommand::ExportTokenizer { model, out, dirs } => {
            let reg = registry(&dirs)?;
            let resolved = hub::resolve(&model, &reg, &fetch_options(&dirs))?;
            let (_, _, tokenizer) = inflight::runtime::open(&resolved)?;
            tokenizer.save_hf_dir(&out)?;
            println!("{}", out.display());
            Ok(())
        }
        ModelsCommand::Pull { name, dirs } => {
            let reg = registry(&dirs)?;
            let path = hub::pull(&name, &reg, &fetch_options(&dirs))?;
            println!("{}", path.display());
            Ok(())
        }
    }
}
