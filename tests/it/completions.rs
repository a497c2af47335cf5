//! Shell completions and manual pages: generated from the same clap definition as the commands,
//! so they cannot drift; the bash script is checked by bash itself.

use std::process::Command;

use crate::support::runner_cmd;

fn run(args: &[&str]) -> String {
    let out = runner_cmd().args(args).output().expect("runner runs");
    assert!(
        out.status.success(),
        "runner {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Every command `runner --help` lists.
fn commands() -> Vec<String> {
    let help = run(&["--help"]);
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completion_is_valid_bash_and_knows_every_command_and_flag() {
    let script = run(&["completions", "bash"]);
    let dir = crate::support::temp_dir();
    let file = dir.path().join("runner.bash");
    std::fs::write(&file, &script).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(&file)
        .output()
        .expect("bash");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Sourced, it completes `runner dry` to `dry-run` and `runner notify --` to its flags.
    let complete = |words: &str| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); _runner runner \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                file.display()
            ))
            .output()
            .expect("bash");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(complete("runner dry").trim(), "dry-run");
    let flags = complete("runner notify --");
    for flag in ["--key", "--data", "--id"] {
        assert!(flags.lines().any(|l| l == flag), "{flag} in {flags}");
    }
    for c in commands() {
        assert!(script.contains(&format!("runner,{c})")), "{c}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(run(&["completions", shell]).contains("dry-run"), "{shell}");
    }
}

#[test]
fn the_manual_has_a_page_for_every_command() {
    let page = run(&["man"]);
    assert!(page.contains(".TH runner 1"), "{page}");
    let dir = crate::support::temp_dir();
    run(&["man", "--out", dir.path().to_str().unwrap()]);
    assert!(dir.path().join("runner.1").is_file());
    for c in commands() {
        let file = dir.path().join(format!("runner-{c}.1"));
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        assert!(text.contains(&format!(".TH runner-{c} 1")), "{text}");
        assert!(
            page.contains(&format!("runner\\-{}(1)", c.replace('-', "\\-"))),
            "runner.1 lists {c}"
        );
    }
}
