/// Declares an open code space as a newtype with named constants (STYLE §7): unknown
/// values survive a round trip and `Debug` prints the name when there is one.
macro_rules! code_space {
    (
        $(#[$meta:meta])*
        pub struct $name:ident($ty:ty) {
            $( $(#[$vmeta:meta])* $konst:ident = $val:expr => $text:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub $ty);

        impl $name {
            $( $(#[$vmeta])* pub const $konst: $name = $name($val); )*

            /// Human-readable description, if the value is a known one.
            pub fn describe(self) -> Option<&'static str> {
                match self.0 {
                    $( v if v == $val => Some($text), )*
                    _ => None,
                }
            }
        }

        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                match self.0 {
                    $( v if v == $val => f.write_str(stringify!($konst)), )*
                    v => write!(f, "{}(0x{:x})", stringify!($name), v),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                match self.describe() {
                    Some(t) => f.write_str(t),
                    None => write!(f, "unknown {} 0x{:x}", stringify!($name), self.0),
                }
            }
        }
    };
}
