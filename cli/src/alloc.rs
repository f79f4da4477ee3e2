//! glibc's malloc arenas, capped before the runtime starts its threads.
//!
//! glibc gives a thread that allocates while the arena it would use is locked an
//! arena of its own, up to eight per core, and keeps what is freed in each for
//! later use there. How many arenas a run makes depends on how many threads
//! happened to allocate at once, so the peak of a long publish moved with luck:
//! 33–51 MiB over six CLI publishes of the same 5.1 GiB imageset, 30.5–36 MiB
//! with two arenas over stops 44 to 50, and 29 MiB with one, where the
//! 1/4-scale publish peaks at 27 (docs/benchmarks.md, stops 44 and 51). Live
//! memory does not grow with the imageset; the arenas' leftovers did. Airlock
//! allocates little and seldom (1 MiB blocks, metadata), so one arena shared
//! by every thread cost no CPU: a publish alternated with one and with two
//! used 1.75–1.92 and 1.86–1.97 user-seconds, 1.98–2.20 and 1.96–2.12
//! system-seconds (a contended lock would show there).
//!
//! `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` in the environment is the user's
//! choice, made before this runs, and is left alone.

use std::ffi::OsStr;

/// Arenas a process is held to.
const ARENAS: i32 = 1;

/// The cap to set, given the environment's two variables: none when the user
/// chose.
fn cap(arena_max: Option<&OsStr>, tunables: Option<&OsStr>) -> Option<i32> {
    let tuned = tunables.is_some_and(|t| t.to_string_lossy().contains("arena_max"));
    (arena_max.is_none() && !tuned).then_some(ARENAS)
}

/// Caps the arenas, unless the environment chose; on glibc only. Called
/// before any other thread exists: the cap holds only arenas made after it.
pub(crate) fn cap_arenas() {
    let arena_max = std::env::var_os("MALLOC_ARENA_MAX");
    let tunables = std::env::var_os("GLIBC_TUNABLES");
    if let Some(n) = cap(arena_max.as_deref(), tunables.as_deref()) {
        set_arena_max(n);
    }
}

/// The workspace's one `unsafe`: `mallopt` is a C function, so every call is
/// unsafe to Rust, though this one only sets a number in glibc's allocator
/// state, once, before other threads exist, and nothing here relies on its
/// result (a cap refused leaves glibc's default).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(
    unsafe_code,
    reason = "mallopt has no safe wrapper in a maintained crate; see the function's doc"
)]
fn set_arena_max(n: i32) {
    // SAFETY: mallopt takes two integers and touches only glibc's own malloc
    // parameters; no pointer crosses, and no other thread is running yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_: i32) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arenas_are_capped_unless_the_environment_chose() {
        assert_eq!(cap(None, None), Some(ARENAS));
        assert_eq!(cap(Some(OsStr::new("8")), None), None);
        assert_eq!(
            cap(None, Some(OsStr::new("glibc.malloc.arena_max=4"))),
            None
        );
        assert_eq!(
            cap(None, Some(OsStr::new("glibc.malloc.trim_threshold=0"))),
            Some(ARENAS),
            "a tunable of something else"
        );
    }
}
