//! Build script of calico-ipam: the git commit, as calico-cni's (`git_commit.rs`), and the
//! build identity that tells calico-cni whether a calico-ipam binary runs the code it holds
//! (`build_id.rs`).

#[path = "build_id.rs"]
mod build_id;
#[path = "git_commit.rs"]
mod git_commit;

fn main() {
    git_commit::main();
    build_id::main();
}
