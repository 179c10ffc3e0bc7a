//! Conversions between wire (`v1`) and domain types.
//!
//! Domain to wire is infallible (`From`); wire to domain is parsing (`TryFrom`), and every
//! failure says which field was wrong so the caller can answer `InvalidArgument`.

use std::collections::BTreeMap;

use domain::classify::StatusCounts;
use domain::outcome::Provenance;
use domain::package_kind::TestFramework;
use domain::spec::RunOptions;
use domain::{
    Assignment, Category, InterpreterProfile, InterpreterRequirement, IterationLogKey, IterationOutcome,
    IterationStatus, JobId, JobResult, LeaseToken, LogRequest, LogStream, Mode, OutcomeAck, PackageResult, PackageSpec,
    RunId, RunSpec, RunState, RunSummary, SetupFailure, SetupStage, Source,
};

use crate::v1;

/// A wire message that does not make a valid domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("invalid field {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> WireError {
    WireError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Parses a run id field.
pub fn parse_run_id(field: &'static str, value: &str) -> Result<RunId, WireError> {
    value
        .parse()
        .map_err(|e: domain::ids::IdError| invalid(field, e.to_string()))
}

/// Parses a lease token field.
pub fn parse_lease_token(field: &'static str, value: &str) -> Result<LeaseToken, WireError> {
    value
        .parse()
        .map_err(|e: domain::ids::IdError| invalid(field, e.to_string()))
}

// ---- enums ----

impl From<Mode> for v1::Mode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Ft => v1::Mode::Ft,
            Mode::Gil => v1::Mode::Gil,
        }
    }
}

/// Parses a wire `Mode` (an `i32` in prost messages).
pub fn mode_from_wire(field: &'static str, value: i32) -> Result<Mode, WireError> {
    match v1::Mode::try_from(value) {
        Ok(v1::Mode::Ft) => Ok(Mode::Ft),
        Ok(v1::Mode::Gil) => Ok(Mode::Gil),
        _ => Err(invalid(field, format!("unknown mode {value}"))),
    }
}

impl From<LogStream> for v1::LogStream {
    fn from(stream: LogStream) -> Self {
        match stream {
            LogStream::Stdout => v1::LogStream::Stdout,
            LogStream::Stderr => v1::LogStream::Stderr,
        }
    }
}

/// Parses a log stream field; unspecified is an error.
pub fn log_stream_from_wire(field: &'static str, value: i32) -> Result<LogStream, WireError> {
    match v1::LogStream::try_from(value) {
        Ok(v1::LogStream::Stdout) => Ok(LogStream::Stdout),
        Ok(v1::LogStream::Stderr) => Ok(LogStream::Stderr),
        _ => Err(invalid(field, format!("unknown log stream {value}"))),
    }
}

impl From<IterationStatus> for v1::IterationStatus {
    fn from(status: IterationStatus) -> Self {
        match status {
            IterationStatus::Pass => v1::IterationStatus::Pass,
            IterationStatus::Fail => v1::IterationStatus::Fail,
            IterationStatus::Crash => v1::IterationStatus::Crash,
            IterationStatus::Deadlock => v1::IterationStatus::Deadlock,
            IterationStatus::Timeout => v1::IterationStatus::Timeout,
            IterationStatus::Oom => v1::IterationStatus::Oom,
            IterationStatus::HarnessError => v1::IterationStatus::HarnessError,
        }
    }
}

fn status_from_wire(value: i32) -> Result<IterationStatus, WireError> {
    match v1::IterationStatus::try_from(value) {
        Ok(v1::IterationStatus::Pass) => Ok(IterationStatus::Pass),
        Ok(v1::IterationStatus::Fail) => Ok(IterationStatus::Fail),
        Ok(v1::IterationStatus::Crash) => Ok(IterationStatus::Crash),
        Ok(v1::IterationStatus::Deadlock) => Ok(IterationStatus::Deadlock),
        Ok(v1::IterationStatus::Timeout) => Ok(IterationStatus::Timeout),
        Ok(v1::IterationStatus::Oom) => Ok(IterationStatus::Oom),
        Ok(v1::IterationStatus::HarnessError) => Ok(IterationStatus::HarnessError),
        _ => Err(invalid("status", format!("unknown iteration status {value}"))),
    }
}

impl From<SetupStage> for v1::SetupStage {
    fn from(stage: SetupStage) -> Self {
        match stage {
            SetupStage::Source => v1::SetupStage::Source,
            SetupStage::Install => v1::SetupStage::Install,
            SetupStage::Import => v1::SetupStage::Import,
        }
    }
}

fn stage_from_wire(value: i32) -> Result<SetupStage, WireError> {
    match v1::SetupStage::try_from(value) {
        Ok(v1::SetupStage::Source) => Ok(SetupStage::Source),
        Ok(v1::SetupStage::Install) => Ok(SetupStage::Install),
        Ok(v1::SetupStage::Import) => Ok(SetupStage::Import),
        _ => Err(invalid("stage", format!("unknown setup stage {value}"))),
    }
}

impl From<Category> for v1::Category {
    fn from(category: Category) -> Self {
        match category {
            Category::Compatible => v1::Category::Compatible,
            Category::CompatibleGilFallback => v1::Category::CompatibleGilFallback,
            Category::Intermittent => v1::Category::Intermittent,
            Category::Incompatible => v1::Category::Incompatible,
            Category::Crash => v1::Category::Crash,
            Category::Deadlock => v1::Category::Deadlock,
            Category::TsanWarnings => v1::Category::TsanWarnings,
            Category::InstallFailure => v1::Category::InstallFailure,
            Category::ImportFailure => v1::Category::ImportFailure,
            Category::Unknown => v1::Category::Unknown,
            Category::HarnessError => v1::Category::HarnessError,
            Category::InfraError => v1::Category::InfraError,
            Category::CompatibleByWheel => v1::Category::CompatibleByWheel,
        }
    }
}

fn category_from_wire(value: i32) -> Result<Category, WireError> {
    let category = match v1::Category::try_from(value) {
        Ok(v1::Category::Compatible) => Category::Compatible,
        Ok(v1::Category::CompatibleGilFallback) => Category::CompatibleGilFallback,
        Ok(v1::Category::Intermittent) => Category::Intermittent,
        Ok(v1::Category::Incompatible) => Category::Incompatible,
        Ok(v1::Category::Crash) => Category::Crash,
        Ok(v1::Category::Deadlock) => Category::Deadlock,
        Ok(v1::Category::TsanWarnings) => Category::TsanWarnings,
        Ok(v1::Category::InstallFailure) => Category::InstallFailure,
        Ok(v1::Category::ImportFailure) => Category::ImportFailure,
        Ok(v1::Category::Unknown) => Category::Unknown,
        Ok(v1::Category::HarnessError) => Category::HarnessError,
        Ok(v1::Category::InfraError) => Category::InfraError,
        Ok(v1::Category::CompatibleByWheel) => Category::CompatibleByWheel,
        _ => return Err(invalid("category", format!("unknown category {value}"))),
    };
    Ok(category)
}

impl From<RunState> for v1::RunState {
    fn from(state: RunState) -> Self {
        match state {
            RunState::Queued => v1::RunState::Queued,
            RunState::Running => v1::RunState::Running,
            RunState::Finished => v1::RunState::Finished,
            RunState::Cancelled => v1::RunState::Cancelled,
        }
    }
}

fn run_state_from_wire(value: i32) -> Result<RunState, WireError> {
    match v1::RunState::try_from(value) {
        Ok(v1::RunState::Queued) => Ok(RunState::Queued),
        Ok(v1::RunState::Running) => Ok(RunState::Running),
        Ok(v1::RunState::Finished) => Ok(RunState::Finished),
        Ok(v1::RunState::Cancelled) => Ok(RunState::Cancelled),
        _ => Err(invalid("state", format!("unknown run state {value}"))),
    }
}

impl From<OutcomeAck> for v1::AckStatus {
    fn from(ack: OutcomeAck) -> Self {
        match ack {
            OutcomeAck::Recorded => v1::AckStatus::Recorded,
            OutcomeAck::Duplicate => v1::AckStatus::Duplicate,
            OutcomeAck::Stale => v1::AckStatus::Stale,
        }
    }
}

// ---- specs ----

impl From<&PackageSpec> for v1::PackageSpec {
    fn from(spec: &PackageSpec) -> Self {
        let source = match &spec.source {
            Source::Sdist => v1::package_spec::Source::Sdist(v1::SdistSource {}),
            Source::Git { url, rev, depth } => v1::package_spec::Source::Git(v1::GitSource {
                url: url.clone(),
                rev: rev.clone(),
                depth: *depth,
            }),
            Source::Path { path } => v1::package_spec::Source::Path(v1::PathSource { path: path.clone() }),
        };
        v1::PackageSpec {
            name: spec.name.clone(),
            version: spec.version.clone(),
            source: Some(source),
            install_command: spec.install_command.clone(),
            test_command: spec.test_command.clone(),
            test_framework: spec.test_framework.to_string(),
            import_name: spec.import_name.clone(),
            timeout_secs: spec.timeout_secs,
            env: spec.env.clone().into_iter().collect(),
            download_count: spec.download_count,
            extension_type: spec.extension_type.map(|t| t.to_string()),
            network: spec.network,
        }
    }
}

impl TryFrom<v1::PackageSpec> for PackageSpec {
    type Error = WireError;

    fn try_from(wire: v1::PackageSpec) -> Result<Self, Self::Error> {
        if wire.name.trim().is_empty() {
            return Err(WireError::Missing("package.name"));
        }
        PackageSpec::check_name(&wire.name).map_err(|reason| invalid("package.name", reason))?;
        if !wire.import_name.is_empty() {
            PackageSpec::check_import_name(&wire.import_name)
                .map_err(|reason| invalid("package.import_name", reason))?;
        }
        for key in wire.env.keys() {
            PackageSpec::check_env_key(key).map_err(|reason| invalid("package.env", reason))?;
        }
        let source = match wire.source.ok_or(WireError::Missing("package.source"))? {
            v1::package_spec::Source::Sdist(_) => Source::Sdist,
            v1::package_spec::Source::Git(git) => {
                if git.url.is_empty() {
                    return Err(WireError::Missing("package.source.git.url"));
                }
                PackageSpec::check_git_url(&git.url).map_err(|reason| invalid("package.source.git.url", reason))?;
                if let Some(rev) = &git.rev {
                    PackageSpec::check_git_rev(rev).map_err(|reason| invalid("package.source.git.rev", reason))?;
                }
                Source::Git {
                    url: git.url,
                    rev: git.rev,
                    depth: git.depth,
                }
            }
            v1::package_spec::Source::Path(path) => {
                if path.path.is_empty() {
                    return Err(WireError::Missing("package.source.path.path"));
                }
                Source::Path { path: path.path }
            }
        };
        if wire.test_command.trim().is_empty() {
            return Err(WireError::Missing("package.test_command"));
        }
        if wire.timeout_secs == Some(0) {
            return Err(invalid("package.timeout_secs", "must be at least 1"));
        }
        // An empty framework is the registry's default, as a registry file without the field.
        let test_framework = match wire.test_framework.as_str() {
            "" => TestFramework::Pytest,
            text => text
                .parse()
                .map_err(|reason: String| invalid("package.test_framework", reason))?,
        };
        let extension_type = wire
            .extension_type
            .map(|text| text.parse())
            .transpose()
            .map_err(|reason: String| invalid("package.extension_type", reason))?;
        Ok(PackageSpec {
            import_name: if wire.import_name.is_empty() {
                PackageSpec::default_import_name(&wire.name)
            } else {
                wire.import_name
            },
            name: wire.name,
            version: wire.version,
            source,
            install_command: wire.install_command,
            test_command: wire.test_command,
            test_framework,
            timeout_secs: wire.timeout_secs,
            env: wire.env.into_iter().collect::<BTreeMap<_, _>>(),
            download_count: wire.download_count,
            extension_type,
            network: wire.network,
        })
    }
}

impl From<&RunOptions> for v1::RunOptions {
    fn from(options: &RunOptions) -> Self {
        v1::RunOptions {
            timeout_secs: options.timeout_secs,
            stall_threshold_secs: options.stall_threshold_secs,
            env: options
                .env
                .iter()
                .map(|(key, value)| v1::EnvVar {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            extra_deps: options.extra_deps.clone(),
            test_command_suffix: options.test_command_suffix.clone(),
            test_command_override: options.test_command_override.clone(),
            stop_on_first_pass: options.stop_on_first_pass,
            detect_extensions: options.detect_extensions,
            tsan: options.tsan,
            parallel_threads: options.parallel_threads,
            test_network: options.test_network,
        }
    }
}

impl TryFrom<v1::RunOptions> for RunOptions {
    type Error = WireError;

    fn try_from(wire: v1::RunOptions) -> Result<Self, Self::Error> {
        if wire.timeout_secs == 0 {
            return Err(invalid("options.timeout_secs", "must be at least 1"));
        }
        if wire.stall_threshold_secs == 0 {
            return Err(invalid("options.stall_threshold_secs", "must be at least 1"));
        }
        if let Some(bad) = wire.env.iter().find(|e| e.key.is_empty() || e.key.contains('=')) {
            return Err(invalid("options.env", format!("invalid variable name {:?}", bad.key)));
        }
        Ok(RunOptions {
            timeout_secs: wire.timeout_secs,
            stall_threshold_secs: wire.stall_threshold_secs,
            env: wire.env.into_iter().map(|e| (e.key, e.value)).collect(),
            extra_deps: wire.extra_deps,
            test_command_suffix: wire.test_command_suffix,
            test_command_override: wire.test_command_override,
            stop_on_first_pass: wire.stop_on_first_pass,
            detect_extensions: wire.detect_extensions,
            tsan: wire.tsan,
            parallel_threads: wire.parallel_threads.filter(|n| *n > 0),
            test_network: wire.test_network,
        })
    }
}

impl From<&InterpreterRequirement> for v1::InterpreterRequirement {
    fn from(req: &InterpreterRequirement) -> Self {
        v1::InterpreterRequirement {
            python_version: req.python_version.clone(),
            free_threaded: req.free_threaded,
            tsan: req.tsan,
            debug: req.debug,
            build: req.build.clone(),
        }
    }
}

impl From<v1::InterpreterRequirement> for InterpreterRequirement {
    fn from(wire: v1::InterpreterRequirement) -> Self {
        InterpreterRequirement {
            python_version: wire.python_version.filter(|v| !v.is_empty()),
            free_threaded: wire.free_threaded,
            tsan: wire.tsan,
            debug: wire.debug,
            // Kept as a request writes it; `RunSpec::validate` refuses one that is no build.
            build: wire.build.filter(|b| !b.is_empty()).map(|b| b.to_ascii_lowercase()),
        }
    }
}

impl From<&RunSpec> for v1::RunSpec {
    fn from(spec: &RunSpec) -> Self {
        v1::RunSpec {
            label: spec.label.clone(),
            packages: spec.packages.iter().map(v1::PackageSpec::from).collect(),
            iterations: spec.iterations,
            modes: spec.modes.iter().map(|m| v1::Mode::from(*m) as i32).collect(),
            options: Some((&spec.options).into()),
            requirement: Some((&spec.requirement).into()),
            registry: spec.registry.clone(),
            rerun_of: spec.rerun_of.map(|id| id.to_string()),
        }
    }
}

impl TryFrom<v1::RunSpec> for RunSpec {
    type Error = WireError;

    fn try_from(wire: v1::RunSpec) -> Result<Self, Self::Error> {
        let packages = wire
            .packages
            .into_iter()
            .map(PackageSpec::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let modes = wire
            .modes
            .into_iter()
            .map(|m| mode_from_wire("spec.modes", m))
            .collect::<Result<Vec<_>, _>>()?;
        let spec = RunSpec {
            label: wire.label,
            packages,
            iterations: wire.iterations,
            modes,
            options: wire.options.ok_or(WireError::Missing("spec.options"))?.try_into()?,
            requirement: wire.requirement.map(InterpreterRequirement::from).unwrap_or_default(),
            registry: wire.registry,
            rerun_of: wire
                .rerun_of
                .as_deref()
                .map(|id| parse_run_id("spec.rerun_of", id))
                .transpose()?,
        };
        spec.validate().map_err(|e| invalid("spec", e.to_string()))?;
        Ok(spec)
    }
}

// ---- interpreter ----

impl From<&InterpreterProfile> for v1::InterpreterProfile {
    fn from(p: &InterpreterProfile) -> Self {
        v1::InterpreterProfile {
            executable: p.executable.clone(),
            version: p.version.clone(),
            version_short: p.version_short.clone(),
            major_minor: p.major_minor.clone(),
            abi_tag: p.abi_tag.clone(),
            free_threaded: p.free_threaded,
            gil_enabled_by_default: p.gil_enabled_by_default,
            tsan: p.tsan,
            debug: p.debug,
            platform: p.platform.clone(),
            configure_args: p.configure_args.clone(),
        }
    }
}

impl TryFrom<v1::InterpreterProfile> for InterpreterProfile {
    type Error = WireError;

    fn try_from(w: v1::InterpreterProfile) -> Result<Self, Self::Error> {
        if w.major_minor.is_empty() {
            return Err(WireError::Missing("interpreter.major_minor"));
        }
        Ok(InterpreterProfile {
            executable: w.executable,
            version: w.version,
            version_short: w.version_short,
            major_minor: w.major_minor,
            abi_tag: w.abi_tag,
            free_threaded: w.free_threaded,
            gil_enabled_by_default: w.gil_enabled_by_default,
            tsan: w.tsan,
            debug: w.debug,
            platform: w.platform,
            configure_args: w.configure_args,
        })
    }
}

// ---- outcomes ----

impl From<&IterationOutcome> for v1::IterationOutcome {
    fn from(o: &IterationOutcome) -> Self {
        v1::IterationOutcome {
            iteration: o.iteration,
            mode: v1::Mode::from(o.mode) as i32,
            status: v1::IterationStatus::from(o.status) as i32,
            exit_code: o.exit_code,
            signal: o.signal,
            duration_ms: o.duration_ms,
            cpu_time_ms: o.cpu_time_ms,
            max_rss_kb: o.max_rss_kb,
            stalled: o.stalled,
            last_output_line: o.last_output_line.clone(),
            stdout_tail: o.stdout_tail.clone(),
            stderr_tail: o.stderr_tail.clone(),
            crash_signature: o.crash_signature.clone(),
            harness_error: o.harness_error.clone(),
            worker_id: o.worker_id.clone(),
            attempt: o.attempt,
            start_latency_ms: o.start_latency_ms,
            evidence_json: if o.evidence.is_empty() {
                String::new()
            } else {
                serde_json::to_string(&o.evidence).unwrap_or_default()
            },
            provenance: (!o.provenance.is_empty()).then(|| (&o.provenance).into()),
        }
    }
}

impl From<&Provenance> for v1::IterationProvenance {
    fn from(p: &Provenance) -> Self {
        v1::IterationProvenance {
            interpreter_build: p.interpreter_build.clone(),
            package_version: p.package_version.clone(),
            freeze_hash: p.freeze_hash.clone(),
            started_at_ms: p.started_at_ms,
            ended_at_ms: p.ended_at_ms,
        }
    }
}

impl From<v1::IterationProvenance> for Provenance {
    fn from(w: v1::IterationProvenance) -> Self {
        Provenance {
            interpreter_build: w.interpreter_build,
            package_version: w.package_version,
            freeze_hash: w.freeze_hash,
            started_at_ms: w.started_at_ms,
            ended_at_ms: w.ended_at_ms,
        }
    }
}

impl TryFrom<v1::IterationOutcome> for IterationOutcome {
    type Error = WireError;

    fn try_from(w: v1::IterationOutcome) -> Result<Self, Self::Error> {
        Ok(IterationOutcome {
            iteration: w.iteration,
            mode: mode_from_wire("outcome.mode", w.mode)?,
            status: status_from_wire(w.status)?,
            exit_code: w.exit_code,
            signal: w.signal,
            duration_ms: w.duration_ms,
            cpu_time_ms: w.cpu_time_ms,
            max_rss_kb: w.max_rss_kb,
            stalled: w.stalled,
            last_output_line: w.last_output_line,
            stdout_tail: w.stdout_tail,
            stderr_tail: w.stderr_tail,
            crash_signature: w.crash_signature,
            harness_error: w.harness_error,
            worker_id: w.worker_id,
            attempt: w.attempt,
            start_latency_ms: w.start_latency_ms,
            evidence: if w.evidence_json.is_empty() {
                Default::default()
            } else {
                serde_json::from_str(&w.evidence_json).map_err(|e| invalid("outcome.evidence_json", e.to_string()))?
            },
            provenance: w.provenance.map(Provenance::from).unwrap_or_default(),
        })
    }
}

impl From<&SetupFailure> for v1::SetupFailure {
    fn from(f: &SetupFailure) -> Self {
        v1::SetupFailure {
            stage: v1::SetupStage::from(f.stage) as i32,
            message: f.message.clone(),
            log_tail: f.log_tail.clone(),
            duration_ms: f.duration_ms,
            infrastructure: f.infrastructure,
        }
    }
}

impl TryFrom<v1::SetupFailure> for SetupFailure {
    type Error = WireError;

    fn try_from(w: v1::SetupFailure) -> Result<Self, Self::Error> {
        Ok(SetupFailure {
            stage: stage_from_wire(w.stage)?,
            message: w.message,
            log_tail: w.log_tail,
            duration_ms: w.duration_ms,
            infrastructure: w.infrastructure,
        })
    }
}

impl From<&JobResult> for v1::JobResult {
    fn from(result: &JobResult) -> Self {
        let kind = match result {
            JobResult::Iteration(outcome) => v1::job_result::Kind::Iteration(outcome.into()),
            JobResult::SetupFailed(failure) => v1::job_result::Kind::SetupFailed(failure.into()),
        };
        v1::JobResult { kind: Some(kind) }
    }
}

impl TryFrom<v1::JobResult> for JobResult {
    type Error = WireError;

    fn try_from(w: v1::JobResult) -> Result<Self, Self::Error> {
        match w.kind.ok_or(WireError::Missing("result.kind"))? {
            v1::job_result::Kind::Iteration(outcome) => Ok(JobResult::Iteration(outcome.try_into()?)),
            v1::job_result::Kind::SetupFailed(failure) => Ok(JobResult::SetupFailed(failure.try_into()?)),
        }
    }
}

// ---- results and runs ----

impl From<&StatusCounts> for v1::StatusCounts {
    fn from(c: &StatusCounts) -> Self {
        v1::StatusCounts {
            pass: c.pass,
            fail: c.fail,
            crash: c.crash,
            deadlock: c.deadlock,
            timeout: c.timeout,
            harness_error: c.harness_error,
            oom: c.oom,
        }
    }
}

impl From<v1::StatusCounts> for StatusCounts {
    fn from(c: v1::StatusCounts) -> Self {
        StatusCounts {
            pass: c.pass,
            fail: c.fail,
            crash: c.crash,
            deadlock: c.deadlock,
            timeout: c.timeout,
            oom: c.oom,
            harness_error: c.harness_error,
        }
    }
}

impl From<&PackageResult> for v1::PackageResult {
    fn from(r: &PackageResult) -> Self {
        v1::PackageResult {
            package: r.package.clone(),
            category: v1::Category::from(r.category) as i32,
            evidence: r.evidence.clone(),
            iterations_planned: r.iterations_planned,
            counts: Some((&r.counts).into()),
            setup_failure: r.setup_failure.as_ref().map(Into::into),
            iterations: r.iterations.iter().map(Into::into).collect(),
            finished: r.finished,
            gil_comparison: r.gil_comparison.as_ref().map(|c| v1::GilComparison {
                gil_counts: Some((&c.gil_counts).into()),
                verdict: c.verdict.to_string(),
                ft_only_failing_tests: c.ft_only_failing_tests.clone(),
            }),
        }
    }
}

impl TryFrom<v1::PackageResult> for PackageResult {
    type Error = WireError;

    fn try_from(w: v1::PackageResult) -> Result<Self, Self::Error> {
        Ok(PackageResult {
            package: w.package,
            category: category_from_wire(w.category)?,
            evidence: w.evidence,
            iterations_planned: w.iterations_planned,
            counts: w.counts.map(StatusCounts::from).unwrap_or_default(),
            setup_failure: w.setup_failure.map(SetupFailure::try_from).transpose()?,
            iterations: w
                .iterations
                .into_iter()
                .map(IterationOutcome::try_from)
                .collect::<Result<_, _>>()?,
            finished: w.finished,
            gil_comparison: w
                .gil_comparison
                .map(|c| {
                    Ok::<_, WireError>(domain::classify::GilComparison {
                        gil_counts: c.gil_counts.map(StatusCounts::from).unwrap_or_default(),
                        verdict: c
                            .verdict
                            .parse()
                            .map_err(|reason: String| invalid("result.gil_comparison.verdict", reason))?,
                        ft_only_failing_tests: c.ft_only_failing_tests,
                    })
                })
                .transpose()?,
        })
    }
}

impl From<&RunSummary> for v1::RunSummary {
    fn from(s: &RunSummary) -> Self {
        v1::RunSummary {
            run_id: s.run_id.to_string(),
            label: s.label.clone(),
            state: v1::RunState::from(s.state) as i32,
            created_at_ms: s.created_at_ms,
            finished_at_ms: s.finished_at_ms,
            archived_at_ms: s.archived_at_ms,
            packages_total: s.packages_total,
            packages_finished: s.packages_finished,
            jobs_total: s.jobs_total,
            jobs_settled: s.jobs_settled,
            jobs_running: s.jobs_running,
            categories: s
                .categories
                .iter()
                .map(|(category, count)| v1::CategoryCount {
                    category: v1::Category::from(*category) as i32,
                    count: *count,
                })
                .collect(),
        }
    }
}

impl TryFrom<v1::RunSummary> for RunSummary {
    type Error = WireError;

    fn try_from(w: v1::RunSummary) -> Result<Self, Self::Error> {
        let mut categories = BTreeMap::new();
        for c in w.categories {
            categories.insert(category_from_wire(c.category)?, c.count);
        }
        Ok(RunSummary {
            run_id: parse_run_id("run.run_id", &w.run_id)?,
            label: w.label,
            state: run_state_from_wire(w.state)?,
            created_at_ms: w.created_at_ms,
            finished_at_ms: w.finished_at_ms,
            archived_at_ms: w.archived_at_ms,
            packages_total: w.packages_total,
            packages_finished: w.packages_finished,
            jobs_total: w.jobs_total,
            jobs_settled: w.jobs_settled,
            jobs_running: w.jobs_running,
            categories,
        })
    }
}

impl From<&Assignment> for v1::Assignment {
    fn from(a: &Assignment) -> Self {
        v1::Assignment {
            job_id: a.job_id.0,
            lease_token: a.lease_token.to_string(),
            attempt: a.attempt,
            run_id: a.run_id.to_string(),
            package: Some((&a.package).into()),
            mode: v1::Mode::from(a.mode) as i32,
            iteration: a.iteration,
            options: Some((&a.options).into()),
        }
    }
}

impl TryFrom<v1::Assignment> for Assignment {
    type Error = WireError;

    fn try_from(w: v1::Assignment) -> Result<Self, Self::Error> {
        Ok(Assignment {
            job_id: JobId(w.job_id),
            lease_token: parse_lease_token("assignment.lease_token", &w.lease_token)?,
            attempt: w.attempt,
            run_id: parse_run_id("assignment.run_id", &w.run_id)?,
            package: w.package.ok_or(WireError::Missing("assignment.package"))?.try_into()?,
            mode: mode_from_wire("assignment.mode", w.mode)?,
            iteration: w.iteration,
            options: w.options.ok_or(WireError::Missing("assignment.options"))?.try_into()?,
        })
    }
}

impl From<&LogRequest> for v1::LogRequest {
    fn from(r: &LogRequest) -> Self {
        v1::LogRequest {
            request_id: r.request_id,
            run_id: r.key.run_id.to_string(),
            package: r.key.package.clone(),
            mode: v1::Mode::from(r.key.mode) as i32,
            iteration: r.key.iteration,
            attempt: r.key.attempt,
            stream: v1::LogStream::from(r.stream) as i32,
            offset: r.offset,
            max_bytes: r.max_bytes,
        }
    }
}

impl TryFrom<v1::LogRequest> for LogRequest {
    type Error = WireError;

    /// A request for more than a chunk's bound asks for the bound.
    fn try_from(w: v1::LogRequest) -> Result<Self, Self::Error> {
        // The worker makes a path of it: only a PyPI name is let through.
        PackageSpec::check_name(&w.package).map_err(|reason| invalid("log_request.package", reason))?;
        Ok(LogRequest {
            request_id: w.request_id,
            key: IterationLogKey {
                run_id: parse_run_id("log_request.run_id", &w.run_id)?,
                package: w.package,
                mode: mode_from_wire("log_request.mode", w.mode)?,
                iteration: w.iteration,
                attempt: w.attempt,
            },
            stream: log_stream_from_wire("log_request.stream", w.stream)?,
            offset: w.offset,
            max_bytes: w.max_bytes.min(domain::iteration_log::MAX_LOG_CHUNK_BYTES),
        })
    }
}

#[cfg(test)]
mod tests {
    use domain::package_kind::ExtensionType;

    use super::*;

    fn package() -> PackageSpec {
        PackageSpec {
            name: "pkg".into(),
            version: Some("1.0".into()),
            source: Source::Git {
                url: "https://example.org/pkg".into(),
                rev: None,
                depth: Some(1),
            },
            install_command: "pip install .".into(),
            test_command: "python -m pytest".into(),
            test_framework: TestFramework::Pytest,
            import_name: "pkg".into(),
            timeout_secs: Some(30),
            env: BTreeMap::from([("A".into(), "1".into())]),
            download_count: Some(7),
            extension_type: Some(ExtensionType::Pure),
            network: false,
        }
    }

    #[test]
    fn a_log_request_crosses_the_wire_and_a_bad_one_names_its_field() {
        let request = LogRequest {
            request_id: 3,
            key: IterationLogKey {
                run_id: RunId::new_at(1),
                package: "zope.interface".into(),
                mode: Mode::Gil,
                iteration: 4,
                attempt: 2,
            },
            stream: LogStream::Stderr,
            offset: 1 << 33,
            max_bytes: 4096,
        };
        assert_eq!(
            LogRequest::try_from(v1::LogRequest::from(&request)),
            Ok(request.clone())
        );
        let mut greedy = v1::LogRequest::from(&request);
        greedy.max_bytes = u32::MAX;
        let bounded = LogRequest::try_from(greedy).expect("parse");
        assert_eq!(bounded.max_bytes, domain::iteration_log::MAX_LOG_CHUNK_BYTES);
        for (field, change) in [
            (
                "log_request.package",
                (|w: &mut v1::LogRequest| w.package = "../../etc".into()) as fn(&mut _),
            ),
            ("log_request.package", |w| w.package = String::new()),
            ("log_request.run_id", |w| w.run_id = "x".into()),
            ("log_request.stream", |w| w.stream = 0),
            ("log_request.mode", |w| w.mode = 0),
        ] {
            let mut wire = v1::LogRequest::from(&request);
            change(&mut wire);
            let error = LogRequest::try_from(wire).expect_err(field).to_string();
            assert!(error.contains(field), "{error}");
        }
    }

    #[test]
    fn run_spec_round_trips() {
        let spec = RunSpec {
            label: "l".into(),
            packages: vec![package()],
            iterations: 3,
            modes: vec![Mode::Ft, Mode::Gil],
            options: RunOptions {
                env: vec![("K".into(), "V".into())],
                ..RunOptions::default()
            },
            requirement: InterpreterRequirement {
                python_version: Some("3.13".into()),
                free_threaded: true,
                tsan: false,
                debug: Some(true),
                build: Some("6cb20a2".into()),
            },
            registry: Some("r".into()),
            rerun_of: None,
        };
        let wire = v1::RunSpec::from(&spec);
        assert_eq!(RunSpec::try_from(wire).unwrap(), spec);
    }

    #[test]
    fn the_network_grants_round_trip() {
        for (network, test_network) in [(false, false), (true, false), (false, true), (true, true)] {
            let spec = RunSpec {
                label: "l".into(),
                packages: vec![PackageSpec { network, ..package() }],
                iterations: 1,
                modes: vec![Mode::Ft],
                options: RunOptions {
                    test_network,
                    ..RunOptions::default()
                },
                requirement: InterpreterRequirement::any(),
                registry: None,
                rerun_of: None,
            };
            let wire = v1::RunSpec::from(&spec);
            assert_eq!(
                (wire.packages[0].network, wire.options.as_ref().map(|o| o.test_network)),
                (network, Some(test_network))
            );
            let back = RunSpec::try_from(wire).unwrap();
            assert_eq!(back, spec);
            assert_eq!(
                back.options.tests_get_network(&back.packages[0]),
                network || test_network
            );
        }
    }

    #[test]
    fn invalid_specs_are_rejected_with_the_field_named() {
        let mut wire = v1::RunSpec::from(&RunSpec {
            label: "l".into(),
            packages: vec![package()],
            iterations: 1,
            modes: vec![Mode::Ft],
            options: RunOptions::default(),
            requirement: InterpreterRequirement::any(),
            registry: None,
            rerun_of: None,
        });
        wire.iterations = 0;
        let err = RunSpec::try_from(wire.clone()).unwrap_err();
        assert!(err.to_string().contains("iterations"), "{err}");
        wire.iterations = 1;
        wire.modes = vec![99];
        assert!(
            RunSpec::try_from(wire.clone())
                .unwrap_err()
                .to_string()
                .contains("spec.modes")
        );
        wire.modes = vec![1];
        wire.packages[0].source = None;
        assert_eq!(
            RunSpec::try_from(wire).unwrap_err(),
            WireError::Missing("package.source")
        );
    }

    #[test]
    fn package_vocabularies_are_parsed_at_the_edge() {
        let mut wire = v1::PackageSpec::from(&package());
        wire.test_framework = "pytets".into();
        let err = PackageSpec::try_from(wire.clone()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid field package.test_framework: unknown test_framework \"pytets\""),
            "{err}"
        );
        wire.test_framework = String::new();
        assert_eq!(
            PackageSpec::try_from(wire.clone()).unwrap().test_framework,
            TestFramework::Pytest
        );
        wire.extension_type = Some("fortran".into());
        let err = PackageSpec::try_from(wire.clone()).unwrap_err();
        assert!(err.to_string().contains("package.extension_type"), "{err}");
        wire.extension_type = None;
        wire.import_name = "os; os.system('id')".into();
        let err = PackageSpec::try_from(wire.clone()).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid field package.import_name"),
            "{err}"
        );
        wire.import_name = String::new();
        wire.name = "../../etc".into();
        let err = PackageSpec::try_from(wire.clone()).unwrap_err();
        assert!(err.to_string().starts_with("invalid field package.name"), "{err}");
        wire.name = "p".into();
        wire.env.insert("LD PRELOAD".into(), "x".into());
        let err = PackageSpec::try_from(wire).unwrap_err();
        assert!(err.to_string().starts_with("invalid field package.env"), "{err}");
    }

    #[test]
    fn every_iteration_status_and_its_count_cross_the_wire() {
        for status in IterationStatus::ALL {
            let wire = v1::IterationStatus::from(status) as i32;
            assert_eq!(status_from_wire(wire), Ok(status));
        }
        assert_eq!(
            v1::IterationStatus::from(IterationStatus::Oom),
            v1::IterationStatus::Oom
        );
        let counts = StatusCounts {
            oom: 3,
            timeout: 1,
            ..StatusCounts::default()
        };
        assert_eq!(StatusCounts::from(v1::StatusCounts::from(&counts)), counts);
    }

    #[test]
    fn an_oom_outcome_and_its_sandbox_report_cross_the_wire() {
        use domain::evidence::{LimitHeld, LimitHit, SandboxKind, SandboxReport};
        let outcome = IterationOutcome {
            iteration: 2,
            mode: Mode::Ft,
            status: IterationStatus::Oom,
            exit_code: None,
            signal: Some(9),
            duration_ms: 1200,
            cpu_time_ms: Some(800),
            max_rss_kb: Some(4 << 20),
            stalled: false,
            last_output_line: "tests/test_big.py ".into(),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            crash_signature: None,
            harness_error: None,
            worker_id: "w1".into(),
            attempt: 1,
            start_latency_ms: Some(5),
            evidence: domain::evidence::IterationEvidence {
                sandbox: Some(SandboxReport {
                    kind: SandboxKind::Bwrap,
                    memory: LimitHeld::Cgroup2,
                    memory_limit_bytes: 4 << 30,
                    pids: LimitHeld::Rlimit,
                    pids_limit: 4096,
                    disk_limit_bytes: 8 << 30,
                    network: true,
                    limits_hit: vec![LimitHit::Memory],
                }),
                ..Default::default()
            },
            provenance: Provenance::default(),
        };
        let wire = v1::IterationOutcome::from(&outcome);
        assert_eq!(wire.status, v1::IterationStatus::Oom as i32);
        assert_eq!(wire.provenance, None, "nothing to say, nothing sent");
        assert_eq!(IterationOutcome::try_from(wire).unwrap(), outcome);
        let outcome = IterationOutcome {
            provenance: Provenance {
                interpreter_build: "3.13.5t@1a2b3c4d5e6f".into(),
                package_version: Some("2.1.0".into()),
                freeze_hash: Some("sha256:ab".into()),
                started_at_ms: Some(1_700_000_000_000),
                ended_at_ms: Some(1_700_000_001_200),
            },
            ..outcome
        };
        let wire = v1::IterationOutcome::from(&outcome);
        assert_eq!(IterationOutcome::try_from(wire).unwrap(), outcome);
    }

    #[test]
    fn every_category_and_an_infrastructure_setup_failure_survive_the_wire() {
        for category in Category::ALL {
            assert_eq!(category_from_wire(v1::Category::from(category) as i32), Ok(category));
        }
        let failure = JobResult::SetupFailed(SetupFailure {
            stage: SetupStage::Install,
            message: "install command exited with status 1: network: Read timed out".into(),
            log_tail: "tail".into(),
            duration_ms: 3,
            infrastructure: true,
        });
        let wire = v1::JobResult::from(&failure);
        assert_eq!(JobResult::try_from(wire), Ok(failure));
    }

    #[test]
    fn unspecified_enums_are_rejected() {
        let wire = v1::JobResult {
            kind: Some(v1::job_result::Kind::SetupFailed(v1::SetupFailure {
                stage: 0,
                ..Default::default()
            })),
        };
        assert!(JobResult::try_from(wire).is_err());
        assert!(JobResult::try_from(v1::JobResult { kind: None }).is_err());
    }
}
