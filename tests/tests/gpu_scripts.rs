//! The CUDA check's scripts (issue 21) on this machine, without a GPU: `scripts/gpu/prepare.sh`
//! splits a wheel into parts that rejoin to its published hash, and `scripts/gpu/check.sh` joins
//! them, checks the hash, extracts the library, runs `weir check-cuda` and says clearly that
//! CUDA is unavailable (exit status 4); a damaged part or a wrong hash fails (exit status 1).
//! A stand-in wheel is used (a zip holding this machine's CPU library under the wheel's path):
//! the real one is 255 MB.

use std::path::Path;
use std::process::{Command, Output};

use weir_tests::{repo, weir_bin};

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn script(name: &str, gpu_dir: &Path, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo().join("scripts/gpu").join(name))
        .args(args)
        .env("GPU_DIR", gpu_dir)
        .env("PART_MB", "8")
        .env("WEIR_BIN", weir_bin())
        .output()
        .expect("run the script")
}

#[test]
fn the_wheel_travels_in_parts_and_the_check_says_cuda_is_unavailable_here() {
    let dir = tempfile::tempdir().unwrap();
    let gpu = dir.path().join("gpu");
    // A stand-in wheel: the CPU library where the onnxruntime-gpu wheel keeps its own.
    let lib = std::env::var_os("ORT_DYLIB_PATH")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo().join(".ort/libonnxruntime.so"));
    let wheel = dir
        .path()
        .join("onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl");
    let ok = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_STORED) as z:\n    z.write(sys.argv[2], 'onnxruntime/capi/libonnxruntime.so.1.31.1')",
        ])
        .arg(&wheel)
        .arg(&lib)
        .status()
        .expect("python3")
        .success();
    assert!(ok, "make the stand-in wheel");
    let published = sha256(&wheel);

    let out = script(
        "prepare.sh",
        &gpu,
        &["--wheel", wheel.to_str().unwrap(), "--sha256", &published],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "prepare.sh:\n{text}");
    assert!(text.contains("parts rejoin to the published hash: ok"), "{text}");
    let mut parts: Vec<_> = std::fs::read_dir(gpu.join("parts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".part-"))
        .collect();
    parts.sort();
    assert!(parts.len() >= 2, "split into parts: {parts:?}");
    for p in &parts {
        assert!(
            std::fs::metadata(p).unwrap().len() <= 8 << 20,
            "{} is over 8 MiB",
            p.display()
        );
    }
    let sums = std::fs::read_to_string(gpu.join("parts/SHA256SUMS")).unwrap();
    assert!(sums.starts_with(&published), "{sums}");

    // The check: joined, hash checked, library extracted, CUDA unavailable (status 4).
    let out = script("check.sh", &gpu, &["--seconds", "0.05", "--batches", "64"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "check.sh:\n{text}");
    assert!(text.contains("sha256 ok"), "{text}");
    assert!(
        text.contains("CUDA UNAVAILABLE") && text.contains("is not a CUDA build"),
        "it says why:\n{text}"
    );
    assert!(text.contains("rows/s"), "the CPU figures are there:\n{text}");

    // A damaged part: the joined wheel fails its hash (status 1), nothing runs.
    let last = parts.last().unwrap();
    let bytes = std::fs::read(last).unwrap();
    std::fs::write(last, &bytes[..bytes.len() - 1]).unwrap();
    let out = script("check.sh", &gpu, &["--seconds", "0.05", "--batches", "64"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "check.sh:\n{text}");
    assert!(text.contains("sha256") && text.contains("FAILED"), "{text}");

    // A wheel that is not the published one is refused before it is split.
    let out = script(
        "prepare.sh",
        &gpu,
        &["--wheel", wheel.to_str().unwrap(), "--sha256", &"0".repeat(64)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PyPI publishes"));
}
