// Container registry, pulled by the app's managed identity (no admin user, no passwords).
param name string
param location string
param tags object = {}

@description('Principal that gets AcrPull on this registry.')
param pullPrincipalId string

var acrPullRoleId = '7f951dda-4ed3-4680-a7ca-43fe172d538d'

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  // checkov:skip=CKV_AZURE_139:Public endpoint needed: azd pushes from developer machines and Container Apps (consumption, no VNet) pulls over it; access is Entra-only (admin user off).
  // checkov:skip=CKV_AZURE_163:Vulnerability scanning is Defender for Containers, a subscription-level plan, not a registry setting.
  // checkov:skip=CKV_AZURE_166:Quarantine is Premium-only and needs a scanner to release images.
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Basic'
  }
  // No anonymous pull either: registries@2023-07-01 has no such setting, and it is off
  // unless a Standard or Premium registry turns it on.
  properties: {
    adminUserEnabled: false
    publicNetworkAccess: 'Enabled'
  }
}

resource acrPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, pullPrincipalId, acrPullRoleId)
  scope: registry
  properties: {
    principalId: pullPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPullRoleId)
  }
}

output name string = registry.name
output loginServer string = registry.properties.loginServer
