//! Compiles `ftsurvey/v1/*.proto` with protox (pure Rust, no system protoc) and generates
//! prost messages and tonic services.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "ftsurvey/v1/model.proto",
        "ftsurvey/v1/survey.proto",
        "ftsurvey/v1/worker.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
