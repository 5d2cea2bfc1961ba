/// meshd's version, shared by `meshd --version`, `meshctl --version`, `/api/version` and the package.
public enum MeshdVersion {
    public static let version = "0.1.0"
}
