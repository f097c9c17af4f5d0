//! Who a container's processes run as: the uid, gid and supplementary groups its first
//! process and every exec get, from the image's USER and /etc/passwd and /etc/group in its
//! rootfs, overridden by the security context as containerd does (run_as_user or
//! run_as_username over USER, run_as_group over the user's group; the image's groups that
//! list the user, then supplemental_groups, as supplementary groups).

use std::path::Path;

use anyhow::{anyhow, Context};

/// What the security context asks (already checked: run_as_group only with a user).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRequest {
    pub run_as_user: Option<u32>,
    pub run_as_username: Option<String>,
    pub run_as_group: Option<u32>,
    pub supplemental_groups: Vec<u32>,
}

/// The identity a container's processes get.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the primary gid first, then the image's groups naming the
    /// user, then the requested ones; without repeats.
    pub additional_gids: Vec<u32>,
}

/// One line of an image's /etc/passwd or /etc/group: name, id, and the fourth field
/// (a passwd line's gid, a group line's member list).
struct Entry<'a> {
    name: &'a str,
    id: u32,
    fourth: &'a str,
}

fn entries(text: &str) -> impl Iterator<Item = Entry<'_>> {
    text.lines().filter_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?.parse().ok()?;
        Some(Entry {
            name,
            id,
            fourth: fields.next().unwrap_or(""),
        })
    })
}

/// An image's account files; a missing file reads as empty, as in an image without them.
struct Accounts {
    passwd: String,
    group: String,
}

impl Accounts {
    fn read(rootfs: &Path) -> anyhow::Result<Self> {
        let read = |file: &str| match std::fs::read_to_string(rootfs.join(file)) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e).with_context(|| format!("read the image's /{file}")),
        };
        Ok(Accounts {
            passwd: read("etc/passwd")?,
            group: read("etc/group")?,
        })
    }

    fn user_by_name(&self, name: &str) -> Option<(u32, u32)> {
        entries(&self.passwd)
            .find(|e| e.name == name)
            .map(|e| (e.id, e.fourth.parse().unwrap_or(e.id)))
    }

    fn user_by_id(&self, uid: u32) -> Option<(&str, u32)> {
        entries(&self.passwd)
            .find(|e| e.id == uid)
            .map(|e| (e.name, e.fourth.parse().unwrap_or(0)))
    }

    fn group_by_name(&self, name: &str) -> Option<u32> {
        entries(&self.group).find(|e| e.name == name).map(|e| e.id)
    }

    /// The groups whose member list names `user` (the user's own group, listed by its
    /// primary gid, excepted).
    fn groups_of(&self, user: &str) -> Vec<u32> {
        entries(&self.group)
            .filter(|e| e.name != user && e.fourth.split(',').any(|m| m.trim() == user))
            .map(|e| e.id)
            .collect()
    }
}

/// The identity for an image whose USER is `image_user` (`user[:group]`, names or
/// numbers; empty is root), with `request` applied; names are looked up in `rootfs`.
pub fn resolve(image_user: &str, request: &UserRequest, rootfs: &Path) -> anyhow::Result<Identity> {
    let accounts = Accounts::read(rootfs)?;
    let (image_user, image_group) = match image_user.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (image_user, None),
    };
    // The user: the request's, else the image's, else root; a number need not be in
    // /etc/passwd (its primary group is then 0, as runc does), a name must be.
    let by_name = |name: &str, whose: &str| {
        accounts
            .user_by_name(name)
            .map(|(uid, gid)| (uid, gid, Some(name.to_string())))
            .ok_or_else(|| anyhow!("{whose} user {name:?} is not in the image's /etc/passwd"))
    };
    let by_id = |uid: u32| {
        let (name, gid) = accounts
            .user_by_id(uid)
            .map_or((None, 0), |(name, gid)| (Some(name.to_string()), gid));
        (uid, gid, name)
    };
    let (uid, primary_gid, name) = if let Some(name) = &request.run_as_username {
        by_name(name, "run_as_username's")?
    } else if let Some(uid) = request.run_as_user {
        by_id(uid)
    } else if image_user.is_empty() {
        by_id(0)
    } else {
        match image_user.parse::<u32>() {
            Ok(uid) => by_id(uid),
            Err(_) => by_name(image_user, "the image's")?,
        }
    };
    // The group: the request's, else the image's when the user is the image's, else the
    // user's primary group.
    let image_gid = match image_group {
        Some(group) if request.run_as_user.is_none() && request.run_as_username.is_none() => {
            Some(match group.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => accounts.group_by_name(group).ok_or_else(|| {
                    anyhow!("the image's group {group:?} is not in the image's /etc/group")
                })?,
            })
        }
        _ => None,
    };
    let gid = request.run_as_group.or(image_gid).unwrap_or(primary_gid);
    let mut additional_gids = vec![gid];
    if let Some(name) = &name {
        additional_gids.extend(accounts.groups_of(name));
    }
    additional_gids.extend(request.supplemental_groups.iter().copied());
    let mut seen = std::collections::HashSet::new();
    additional_gids.retain(|g| seen.insert(*g));
    Ok(Identity {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65533::/:/bin/false\n\
             user:x:1000:1000::/home/user:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nnogroup:x:65533:\nuser:x:1000:user\npredefined:x:50000:nobody,user\n",
        )
        .unwrap();
        dir
    }

    fn ids(image_user: &str, request: UserRequest) -> (u32, u32, Vec<u32>) {
        let dir = image();
        let id = resolve(image_user, &request, dir.path()).unwrap();
        (id.uid, id.gid, id.additional_gids)
    }

    #[test]
    fn the_image_user_by_number_or_name_with_its_groups() {
        assert_eq!(ids("", UserRequest::default()), (0, 0, vec![0]));
        assert_eq!(
            ids("nobody", UserRequest::default()),
            (65534, 65533, vec![65533, 50000])
        );
        assert_eq!(
            ids("65534", UserRequest::default()),
            (65534, 65533, vec![65533, 50000])
        );
        assert_eq!(ids("1000:nogroup", UserRequest::default()).1, 65533);
        assert_eq!(ids("4242", UserRequest::default()), (4242, 0, vec![0]));
        let dir = image();
        let err = resolve("ghost", &UserRequest::default(), dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("the image's user \"ghost\""),
            "{err}"
        );
        let err = resolve("user:ghosts", &UserRequest::default(), dir.path()).unwrap_err();
        assert!(err.to_string().contains("group \"ghosts\""), "{err}");
    }

    #[test]
    fn the_security_context_overrides_the_image() {
        let request = UserRequest {
            run_as_user: Some(1000),
            supplemental_groups: vec![1234, 50000],
            ..Default::default()
        };
        // The image's group goes with the image's user only.
        assert_eq!(
            ids("nobody:nogroup", request),
            (1000, 1000, vec![1000, 50000, 1234])
        );
        let request = UserRequest {
            run_as_user: Some(1000),
            run_as_group: Some(7),
            ..Default::default()
        };
        assert_eq!(ids("", request), (1000, 7, vec![7, 50000]));
        let request = UserRequest {
            run_as_username: Some("nobody".into()),
            ..Default::default()
        };
        assert_eq!(ids("user", request), (65534, 65533, vec![65533, 50000]));
        let dir = image();
        let request = UserRequest {
            run_as_username: Some("ghost".into()),
            ..Default::default()
        };
        let err = resolve("", &request, dir.path()).unwrap_err();
        assert!(err.to_string().contains("run_as_username's user"), "{err}");
    }

    #[test]
    fn an_image_without_account_files_runs_numbers_only() {
        let dir = tempfile::tempdir().unwrap();
        let id = resolve("1001", &UserRequest::default(), dir.path()).unwrap();
        assert_eq!((id.uid, id.gid), (1001, 0));
        assert!(resolve("user", &UserRequest::default(), dir.path()).is_err());
    }
}
