//! A small reader for the kernel's BTF (/sys/kernel/btf/vmlinux): struct member offsets for
//! the programs (Rust eBPF has no CO-RE relocations) and function prototypes for load-time
//! checks of the hooks fim relies on.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Debug)]
struct Member {
    name: String,
    type_id: u32,
    offset_bits: u32,
}

#[derive(Clone, Debug)]
struct Type {
    kind: u32,
    name: String,
    /// Referenced type (ptr, typedef, modifiers, func -> proto, proto -> return type).
    type_id: u32,
    members: Vec<Member>,
}

/// Parsed kernel BTF.
pub struct KernelBtf {
    types: Vec<Type>,
    by_name: HashMap<(u32, String), u32>,
}

fn read_u32(data: &[u8], at: usize) -> Result<u32> {
    let bytes = data.get(at..at + 4).context("BTF is truncated")?;
    Ok(u32::from_le_bytes(bytes.try_into()?))
}

impl KernelBtf {
    pub fn from_sys_fs() -> Result<KernelBtf> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path)
            .with_context(|| format!("reading {path} (the kernel needs CONFIG_DEBUG_INFO_BTF)"))?;
        Self::parse(&data).with_context(|| format!("parsing {path}"))
    }

    pub fn parse(data: &[u8]) -> Result<KernelBtf> {
        let magic = u16::from_le_bytes(data.get(0..2).context("BTF is empty")?.try_into()?);
        if magic != BTF_MAGIC {
            bail!("not little-endian BTF (magic {magic:#x})");
        }
        let hdr_len = read_u32(data, 4)? as usize;
        let type_off = read_u32(data, 8)? as usize;
        let type_len = read_u32(data, 12)? as usize;
        let str_off = read_u32(data, 16)? as usize;
        let str_len = read_u32(data, 20)? as usize;
        let types_start = hdr_len + type_off;
        let strings_start = hdr_len + str_off;
        let strings = data
            .get(strings_start..strings_start + str_len)
            .context("BTF string section out of range")?;
        let name_at = |off: u32| -> String {
            let rest = strings.get(off as usize..).unwrap_or(&[]);
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        };
        // Type id 0 is `void`.
        let mut types = vec![Type {
            kind: 0,
            name: String::new(),
            type_id: 0,
            members: Vec::new(),
        }];
        let mut at = types_start;
        let end = types_start + type_len;
        while at < end {
            let name_off = read_u32(data, at)?;
            let info = read_u32(data, at + 4)?;
            let size_or_type = read_u32(data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
                KIND_ARRAY => at += 12,
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        let m_name = read_u32(data, at)?;
                        let m_type = read_u32(data, at + 4)?;
                        let m_off = read_u32(data, at + 8)?;
                        at += 12;
                        let offset_bits = if kind_flag {
                            m_off & 0x00ff_ffff
                        } else {
                            m_off
                        };
                        members.push(Member {
                            name: name_at(m_name),
                            type_id: m_type,
                            offset_bits,
                        });
                    }
                }
                KIND_ENUM => at += 8 * vlen,
                KIND_FUNC_PROTO => {
                    for _ in 0..vlen {
                        let p_name = read_u32(data, at)?;
                        let p_type = read_u32(data, at + 4)?;
                        at += 8;
                        members.push(Member {
                            name: name_at(p_name),
                            type_id: p_type,
                            offset_bits: 0,
                        });
                    }
                }
                KIND_DATASEC | KIND_ENUM64 => at += 12 * vlen,
                _ => {}
            }
            types.push(Type {
                kind,
                name: name_at(name_off),
                type_id: size_or_type,
                members,
            });
        }
        let mut by_name = HashMap::new();
        for (id, ty) in types.iter().enumerate() {
            if !ty.name.is_empty() {
                by_name
                    .entry((ty.kind, ty.name.clone()))
                    .or_insert(id as u32);
            }
        }
        Ok(KernelBtf { types, by_name })
    }

    fn ty(&self, id: u32) -> Result<&Type> {
        self.types
            .get(id as usize)
            .with_context(|| format!("BTF type id {id} out of range"))
    }

    /// Follows typedefs and qualifiers.
    fn strip(&self, mut id: u32) -> Result<u32> {
        for _ in 0..32 {
            let ty = self.ty(id)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.type_id
                }
                _ => return Ok(id),
            }
        }
        bail!("BTF type chain too long")
    }

    /// Finds `member` in a struct/union, descending into anonymous members. Bit offset.
    fn find_member(&self, type_id: u32, member: &str) -> Result<Option<(u32, u32)>> {
        let ty = self.ty(self.strip(type_id)?)?;
        for m in &ty.members {
            if m.name == member {
                return Ok(Some((m.offset_bits, m.type_id)));
            }
            if m.name.is_empty() {
                let inner = self.ty(self.strip(m.type_id)?)?;
                if (inner.kind == KIND_STRUCT || inner.kind == KIND_UNION)
                    && let Some((off, t)) = self.find_member(m.type_id, member)?
                {
                    return Ok(Some((m.offset_bits + off, t)));
                }
            }
        }
        Ok(None)
    }

    /// Byte offset of `struct_name.a.b...`.
    pub fn offset_of(&self, struct_name: &str, members: &str) -> Result<u32> {
        let mut type_id = *self
            .by_name
            .get(&(KIND_STRUCT, struct_name.to_string()))
            .with_context(|| format!("struct {struct_name} is not in the kernel's BTF"))?;
        let mut bits = 0u32;
        for member in members.split('.') {
            let (off, next) = self.find_member(type_id, member)?.with_context(|| {
                format!("struct {struct_name} has no member {members} in the kernel's BTF")
            })?;
            bits += off;
            type_id = next;
        }
        if !bits.is_multiple_of(8) {
            bail!("{struct_name}.{members} is a bitfield");
        }
        Ok(bits / 8)
    }

    /// The parameters of function `name` as readable type names (`struct path *`, `int`...).
    pub fn function_params(&self, name: &str) -> Result<Vec<String>> {
        let func = *self
            .by_name
            .get(&(KIND_FUNC, name.to_string()))
            .with_context(|| format!("function {name} is not in the kernel's BTF"))?;
        let proto = self.ty(self.ty(func)?.type_id)?;
        if proto.kind != KIND_FUNC_PROTO {
            bail!("{name} has no prototype in BTF");
        }
        proto
            .members
            .iter()
            .map(|p| self.type_name(p.type_id))
            .collect()
    }

    fn type_name(&self, id: u32) -> Result<String> {
        let stripped = self.strip(id)?;
        let ty = self.ty(stripped)?;
        Ok(match ty.kind {
            0 => "void".to_string(),
            KIND_PTR => format!("{} *", self.type_name(ty.type_id)?),
            KIND_STRUCT => format!("struct {}", ty.name),
            KIND_UNION => format!("union {}", ty.name),
            _ => {
                // Integers and enums: keep the typedef'd name when there is one (umode_t).
                let named = self.ty(id)?;
                if named.name.is_empty() {
                    ty.name.clone()
                } else {
                    named.name.clone()
                }
            }
        })
    }
}
